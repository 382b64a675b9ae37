"""Perception: face detection, 478 face landmarks and a person matte, on CPU (MediaPipe's models
run by LiteRT; no ``mediapipe`` dependency)."""
from avatar.perception.detection import FaceDetection, FaceDetector
from avatar.perception.landmarks import (
    NUM_LANDMARKS,
    FaceLandmarker,
    FaceResult,
    FaceTracker,
    LandmarkTrack,
    detect_faces,
    landmarks_for_image,
)
from avatar.perception.roi import Roi

__all__ = [
    "NUM_LANDMARKS", "FaceDetection", "FaceDetector", "FaceLandmarker", "FaceResult", "FaceTracker",
    "LandmarkTrack", "Roi", "detect_faces", "landmarks_for_image",
]
