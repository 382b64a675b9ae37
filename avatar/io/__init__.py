"""Frames in and out: video files, image folders and images (PyAV + Pillow), streamed; Live Link Face
UDP packets in and out (:mod:`avatar.io.livelink`); live frame sources for driving (:mod:`avatar.io.live`)."""
from avatar.io.livelink import LiveLinkFrame, LiveLinkPacketError, LiveLinkReceiver, LiveLinkSender
from avatar.io.video import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    FrameReader,
    VideoInfo,
    VideoWriter,
    probe,
    read_frames,
    read_image,
    write_image,
)

__all__ = [
    "IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "FrameReader", "LiveLinkFrame", "LiveLinkPacketError", "LiveLinkReceiver",
    "LiveLinkSender", "VideoInfo", "VideoWriter", "probe",
    "read_frames", "read_image", "write_image",
]
