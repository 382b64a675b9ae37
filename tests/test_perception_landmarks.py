"""avatar.perception: anchors/NMS/ROI/custom-op math on synthetic data, and detection + 478
landmarks + matte on the shared real clips and images (skipped when ../shared/data is absent)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from avatar.io import FrameReader, VideoWriter, read_image
from avatar.perception import FaceTracker, Roi, detect_faces, landmarks_for_image
from avatar.perception._tflite import landmarks_to_transform_matrix, transform_landmarks, transform_tensor_bilinear
from avatar.perception.detection import ssd_anchors, weighted_nms
from avatar.perception.matte import PersonMatte
from avatar.perception.roi import crop_matrix, roi_from_box, rotation_from_points

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "video").is_dir(), reason="../shared/data not present")
VIDEOS = ["hdtf_katiehill.mp4", "hdtf_aoc.mp4", "liveportrait_d3.mp4", "liveportrait_d9.mp4",
          "liveportrait_d10.mp4", "liveportrait_d13.mp4"]


@pytest.fixture(scope="module")
def tracker() -> FaceTracker:
    return FaceTracker(num_threads=2)


# ---------------------------------------------------------------- synthetic: the math
def test_anchor_counts_match_the_models():
    assert ssd_anchors(128, (8, 16, 16, 16), 2).shape == (896, 2)
    assert ssd_anchors(192, (4,), 1).shape == (2304, 2)
    a = ssd_anchors(128, (8, 16, 16, 16), 2)
    np.testing.assert_allclose(a[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(a[512], [0.5 / 8, 0.5 / 8])  # first cell of the stride-16 grid


def test_weighted_nms_merges_overlaps_and_keeps_separate_faces():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float64)
    kps = np.zeros((3, 6, 2))
    kps[1] += 1.0
    scores = np.array([0.9, 0.6, 0.8])
    out = weighted_nms(boxes, kps, scores, 0.3)
    assert len(out) == 2
    box, kp, score = out[0]
    assert score == 0.9
    np.testing.assert_allclose(box, [0.4, 0, 10.4, 10])  # score-weighted: 0.6 / 1.5 of 1 px shift
    np.testing.assert_allclose(kp, np.full((6, 2), 0.4))
    np.testing.assert_allclose(out[1][0], boxes[2])


@pytest.mark.parametrize("rotation", [0.0, 0.4, -1.2])
def test_crop_matrix_maps_roi_corners_to_crop_corners(rotation):
    roi = Roi(100.0, 80.0, 50.0, rotation)
    m = crop_matrix(roi, 192, 192)
    corners = roi.corners()
    mapped = corners @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(mapped, [[0, 0], [192, 0], [192, 192], [0, 192]], atol=1e-9)


def test_rotation_from_points_levels_the_eyes():
    assert rotation_from_points(np.array([0, 0]), np.array([10, 0])) == pytest.approx(0.0)
    # right eye lower than left on screen (head tilted): positive angle turns the crop with it
    assert rotation_from_points(np.array([0, 0]), np.array([10, 10])) == pytest.approx(math.pi / 4)
    roi = roi_from_box(np.array([10, 20, 30, 60]), 0.0)
    assert (roi.cx, roi.cy, roi.size) == (20, 40, 60)


def test_custom_ops_crop_and_map_back_consistently():
    rng = np.random.default_rng(0)
    lm = np.zeros((1, 468, 3), np.float32)
    lm[0, :, :2] = rng.uniform(10, 30, (468, 2))
    opts = {"left_rotation_idx": 0, "right_rotation_idx": 1, "output_width": 16, "output_height": 16,
            "scale_x": 1.5, "scale_y": 1.5, "subset_idxs": list(range(2, 40)), "target_rotation_radians": 0.0}
    m = landmarks_to_transform_matrix(lm, opts)
    # the grid centre (8, 8) lands on the rotated box centre, and points round-trip through the inverse
    pts = np.array([[[8.0, 8.0], [0.0, 0.0], [16.0, 16.0]]], np.float32)
    mapped = transform_landmarks(pts, m, {})
    inv = np.linalg.inv(m[0].astype(np.float64))
    back = mapped[0] @ inv[:2, :2].T + inv[:2, 3]
    np.testing.assert_allclose(back, pts[0], atol=1e-3)
    # bilinear crop of a linear ramp f(x, y) = x samples x at the v2 (half-pixel) positions
    feat = np.tile(np.arange(48, dtype=np.float32)[None, :, None], (48, 1, 1))[None]
    eye = np.eye(4, dtype=np.float32)[None]
    eye[0, 0, 3], eye[0, 1, 3] = 10.0, 10.0
    crop = transform_tensor_bilinear(feat, eye, {"output_width": 16, "output_height": 16})
    np.testing.assert_allclose(crop[0, 0, :, 0], np.arange(16) + 10.0, atol=1e-5)


def test_no_face_clip_reports_none(tmp_path, tracker):
    rng = np.random.default_rng(1)
    path = tmp_path / "noface.mp4"
    with VideoWriter(path, fps=10) as w:
        for i in range(8):
            if i % 2:
                frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
            else:
                ramp = np.linspace(0, 255, 320, dtype=np.float32)
                frame = np.stack([np.tile(ramp, (240, 1)), np.full((240, 320), 40.0 * i % 255, np.float32),
                                  np.tile(ramp[::-1], (240, 1))], -1).astype(np.uint8)
            w.write(frame)
    tracker.reset()
    track = tracker.track(FrameReader(path, dtype="uint8"))
    assert track.found.shape == (8,) and not track.found.any()
    assert np.isnan(track.landmarks).all()
    assert track.detected.all()  # nothing to track: the detector ran on every frame


# ---------------------------------------------------------------- real data
@needs_shared
@pytest.mark.parametrize("name", VIDEOS)
def test_face_in_every_frame_of_shared_videos(name, tracker):
    tracker.reset()
    reader = FrameReader(SHARED / "video" / name, limit=60, dtype="uint8")
    track = tracker.track(reader)
    assert len(track.found) == 60
    assert track.found.all(), f"no face in frames {np.nonzero(~track.found)[0].tolist()}"
    assert track.scores.min() > 0.5
    lm = track.landmarks
    w, h = reader.info.width, reader.info.height
    assert (lm[..., 0] > -0.05 * w).all() and (lm[..., 0] < 1.05 * w).all()
    assert (lm[..., 1] > -0.05 * h).all() and (lm[..., 1] < 1.05 * h).all()
    # upright faces: eyes (iris centres) above the nose tip, nose above the mouth
    assert (lm[:, 468, 1] < lm[:, 1, 1]).all() and (lm[:, 473, 1] < lm[:, 1, 1]).all()
    assert (lm[:, 1, 1] < lm[:, 13, 1]).all()
    # tracking mode: the detector runs once, then the ROI follows the landmarks
    assert track.detected.sum() <= 3
    # temporally smooth: the nose tip moves far less than the inter-ocular distance per frame
    iod = np.linalg.norm(lm[:, 468, :2] - lm[:, 473, :2], axis=-1)
    assert np.median(np.linalg.norm(np.diff(lm[:, 1, :2], axis=0), axis=-1) / iod[1:]) < 0.1


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("name", VIDEOS)
def test_face_in_every_frame_full_pass(name, tracker):
    tracker.reset()
    track = tracker.track(FrameReader(SHARED / "video" / name, dtype="uint8"))
    assert track.found.all(), f"no face in frames {np.nonzero(~track.found)[0].tolist()}"


@needs_shared
def test_two_faces_gives_the_larger(caplog):
    img = read_image(SHARED / "images" / "3ddfa_two_faces.jpg", "uint8")
    dets = detect_faces(img)
    assert len(dets) == 2
    largest = max(dets, key=lambda d: d.area)
    face = landmarks_for_image(img)
    assert face.found
    cx = face.landmarks[:, 0].mean()
    assert largest.box[0] < cx < largest.box[2]
    assert "2 faces" in caplog.text


@needs_shared
@pytest.mark.parametrize("name", ["000002.jpg", "000006.jpg", "015316.jpg", "vd006.png", "vd025.png"])
def test_landmarks_agree_with_annotated_five_points(name):
    """The images' .txt give eyes, nose tip, mouth corners from another detector (rough): our
    points must land near them (a wrong crop/rotation/projection would be off by > 1 IOD)."""
    img = read_image(SHARED / "images" / name, "uint8")
    ref = np.loadtxt(SHARED / "images" / (Path(name).stem + ".txt"))
    face = landmarks_for_image(img)
    assert face.found
    ours = face.landmarks[[468, 473, 1, 61, 291], :2]
    iod = np.linalg.norm(ref[0] - ref[1])
    err = np.linalg.norm(ours - ref, axis=1) / iod
    assert err.max() < 0.35, err


@needs_shared
def test_float_and_uint8_frames_agree(tracker):
    img = read_image(SHARED / "images" / "facealignment_aflw-test.jpg", "uint8")
    a = landmarks_for_image(img)
    b = landmarks_for_image(img.astype(np.float32) / 255.0)
    np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)


@needs_shared
def test_person_matte_separates_person_from_background():
    frames = list(FrameReader(SHARED / "video" / "hdtf_aoc.mp4", limit=5, dtype="uint8"))
    matte = PersonMatte()
    face = landmarks_for_image(frames[0])
    masks = [matte(f) for f in frames]
    assert masks[0].shape == frames[0].shape[:2] and masks[0].dtype == np.float32
    nose = face.landmarks[1, :2].astype(int)
    assert all(m[nose[1], nose[0]] > 0.9 for m in masks)
    assert all(m[:20, :20].mean() < 0.1 for m in masks)  # top-left corner is background here
    # the temporal filter only damps: it never moves a pixel outside [raw, previous]
    matte.reset()
    raw0, raw1 = matte.raw(frames[0]), matte.raw(frames[1])
    f0, f1 = matte(frames[0]), matte(frames[1])
    lo, hi = np.minimum(raw1, f0) - 1e-6, np.maximum(raw1, f0) + 1e-6
    assert ((f1 >= lo) & (f1 <= hi)).all()
    np.testing.assert_allclose(f0, raw0)
