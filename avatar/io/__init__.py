"""Frames in and out: video files, image folders and images (PyAV + Pillow), streamed."""
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
    "IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "FrameReader", "VideoInfo", "VideoWriter", "probe",
    "read_frames", "read_image", "write_image",
]
