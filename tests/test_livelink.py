"""Live Link Face packets (issue 34, item 3): our sender -> our receiver over real sockets on
127.0.0.1, packets built here by hand from the issue's layout (never with our encoder), malformed
datagrams skipped and counted, the ARKit name mapping, the eyeLook fill and the rotation helpers."""
from __future__ import annotations

import math
import socket
import struct
import time

import numpy as np
import pytest

from avatar.errors import AvatarError
from avatar.io.livelink import (
    ARKIT_NAMES, CURVE_NAMES, MAX_NAME_BYTES, MAX_PACKET_BYTES, MIN_PACKET_BYTES, LiveLinkFrame, LiveLinkPacketError,
    LiveLinkReceiver, LiveLinkSender, curve_index, decode, encode, eye_look_weights, matrix_to_ypr, ypr_to_matrix,
)  # fmt: skip
from avatar.models.anny_head import ARKIT_52

TIMEOUT = 2.0  # seconds: the most any wait here may take (loopback delivers in microseconds)


def _issue_order() -> list[str]:
    """The 61 curves in the order issue 34 lists them, spelled out from its text."""
    eye = ["eyeBlink", "eyeLookDown", "eyeLookIn", "eyeLookOut", "eyeLookUp", "eyeSquint", "eyeWide"]
    lr = lambda *stems: [f"{s}{side}" for s in stems for side in ("Left", "Right")]  # noqa: E731
    return ([f"{s}Left" for s in eye] + [f"{s}Right" for s in eye]
            + ["jawForward", "jawLeft", "jawRight", "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker",
               "mouthLeft", "mouthRight"]
            + lr("mouthSmile", "mouthFrown", "mouthDimple", "mouthStretch")
            + ["mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper"]
            + lr("mouthPress", "mouthLowerDown", "mouthUpperUp")
            + ["browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff"]
            + lr("cheekSquint", "noseSneer") + ["tongueOut", "headYaw", "headPitch", "headRoll"]
            + [f"{eye}Eye{a}" for eye in ("left", "right") for a in ("Yaw", "Pitch", "Roll")])  # fmt: skip


ISSUE_ORDER = _issue_order()


def hand_packet(curves, *, version=6, device=b"iPhone-1234", subject=b"Face", frame=4321, subframe=0.5,
                rate=(60, 1), count=61, fmt=">61f") -> bytes:  # fmt: skip
    """A packet written field by field from the issue's layout with struct, not with our encoder."""
    return (struct.pack(">B", version) + struct.pack(">i", len(device)) + device
            + struct.pack(">i", len(subject)) + subject + struct.pack(">i", frame) + struct.pack(">f", subframe)
            + struct.pack(">ii", *rate) + struct.pack(">B", count) + struct.pack(fmt, *curves))  # fmt: skip


def ramp() -> list[float]:
    """Curve i = (i + 1) / 100, so a curve read from the wrong position shows."""
    return [(i + 1) / 100 for i in range(61)]


def random_frame(seed: int = 0, **header) -> LiveLinkFrame:
    rng = np.random.default_rng(seed)
    curves = np.concatenate([rng.uniform(0, 1, 52), rng.uniform(-0.5, 0.5, 9)])
    return LiveLinkFrame(curves, **header)


def poll_until(rx: LiveLinkReceiver, done) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not done() and time.monotonic() < deadline:
        rx.poll(timeout=0.05)


@pytest.fixture
def rx():
    with LiveLinkReceiver(port=0) as receiver:
        yield receiver


@pytest.fixture
def raw():
    """A plain UDP socket to send hand-made datagrams."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        yield s


# --- names -------------------------------------------------------------------------------------
def test_curve_order_is_the_issues() -> None:
    assert len(ISSUE_ORDER) == 61 == len(set(ISSUE_ORDER))
    assert list(CURVE_NAMES) == ISSUE_ORDER
    assert list(ARKIT_NAMES) == ISSUE_ORDER[:52]


def test_names_cover_annyheads_52_arkit_channels() -> None:
    assert len(ARKIT_52) == 52 and set(ARKIT_52) == set(ARKIT_NAMES)
    w = np.random.default_rng(1).uniform(0, 1, 52)
    frame = LiveLinkFrame.from_arkit(ARKIT_52, w)
    np.testing.assert_array_equal(frame.weights(ARKIT_52), w.astype(np.float32))
    for name, value in zip(ARKIT_52, w):  # by name, whatever the order
        assert frame.curves[CURVE_NAMES.index(name)] == np.float32(value)
    assert not frame.curves[52:].any()


def test_unreal_spellings_and_unknown_names() -> None:
    assert curve_index("EyeBlinkLeft") == curve_index("eyeBlinkLeft") == 0
    assert curve_index("HeadYaw") == 52 and curve_index("RightEyeRoll") == 60
    with pytest.raises(KeyError, match="expr_000"):
        curve_index("expr_000")
    with pytest.raises(KeyError, match="rotation"):
        LiveLinkFrame.from_arkit(["headYaw"], [0.1])
    with pytest.raises(ValueError, match="2 names but 1 weights"):
        LiveLinkFrame.from_arkit(["jawOpen", "cheekPuff"], [0.1])


# --- sockets -----------------------------------------------------------------------------------
def test_receiver_binds_loopback_by_default(rx: LiveLinkReceiver) -> None:
    host, port = rx.address
    assert host == "127.0.0.1" and port > 0
    assert rx.poll() is None and rx.latest() is None and rx.poll(timeout=0.02) is None
    with pytest.raises(AvatarError, match="cannot listen"):
        LiveLinkReceiver(port=port)


def test_sender_to_receiver_round_trip(rx: LiveLinkReceiver) -> None:
    sent = random_frame(0, device_id="Ipad-Λ", subject="Ana ☺", frame=2**31 - 1, subframe=0.375,
                        fps_numerator=60000, fps_denominator=1001)  # fmt: skip
    with LiveLinkSender("127.0.0.1", rx.port) as tx:
        assert tx.send(sent) == len(encode(sent)) and tx.sent == 1
        got = rx.poll(timeout=TIMEOUT)
    assert got is not None and rx.received == 1 and rx.malformed == 0
    assert np.abs(got.curves.astype(np.float64) - sent.curves).max() <= 1e-6
    for name in CURVE_NAMES:
        assert abs(got[name] - sent[name]) <= 1e-6
    header = ("device_id", "subject", "frame", "subframe", "fps_numerator", "fps_denominator")
    assert [getattr(got, k) for k in header] == ["Ipad-Λ", "Ana ☺", 2**31 - 1, 0.375, 60000, 1001]
    assert got.fps == pytest.approx(59.94, abs=1e-3)


def test_poll_returns_the_newest_of_a_burst(rx: LiveLinkReceiver) -> None:
    with LiveLinkSender("127.0.0.1", rx.port) as tx:
        for k in range(20):
            tx.send(random_frame(k, frame=k))
        poll_until(rx, lambda: rx.received == 20)
    assert rx.received == 20 and rx.malformed == 0
    assert rx.latest().frame == 19
    np.testing.assert_array_equal(rx.latest().curves, random_frame(19).curves)


def test_send_tracked_weights_rotations_and_eye_look(rx: LiveLinkReceiver) -> None:
    names = list(ARKIT_52)  # alphabetical: not the packet's order
    w = np.random.default_rng(2).uniform(0, 1, 52)
    w[[names.index(n) for n in names if n.startswith("eyeLook")]] = 0  # the tracker holds them at 0
    head = np.array([0.3, -0.2, 0.1])
    eyes = np.array([[math.radians(12), math.radians(-6), 0.0], [math.radians(9), math.radians(-6), 0.0]])
    with LiveLinkSender("127.0.0.1", rx.port, device_id="tracker", subject="anny") as tx:
        first = tx.send_tracked(names, w, head_ypr=head, eyes_ypr=eyes)
        second = tx.send_tracked(names, w, head_ypr=head, eyes_ypr=eyes)
        poll_until(rx, lambda: rx.received == 2)
    got = rx.latest()
    assert (first.frame, second.frame, got.frame) == (0, 1, 1)
    assert (got.device_id, got.subject) == ("tracker", "anny")
    look = eye_look_weights(eyes)
    for name, value in zip(names, w):
        expected = look[name] if name.startswith("eyeLook") else value
        assert abs(got[name] - expected) <= 1e-6, name
    assert look["eyeLookOutLeft"] > 0 and look["eyeLookInRight"] > 0 and look["eyeLookUpLeft"] > 0
    np.testing.assert_allclose(got.head_ypr, head, atol=1e-6)
    np.testing.assert_allclose(got.eyes_ypr, eyes, atol=1e-6)
    assert got["headYaw"] == pytest.approx(0.3 / math.pi, abs=1e-7)  # half-turns on the wire


# --- packets made by hand ------------------------------------------------------------------------
def test_hand_made_packet_is_parsed() -> None:
    frame = decode(hand_packet(ramp(), subframe=0.25, rate=(30, 1)))
    for i, name in enumerate(ISSUE_ORDER):
        assert frame[name] == np.float32((i + 1) / 100), name
    assert (frame.device_id, frame.subject, frame.frame, frame.subframe) == ("iPhone-1234", "Face", 4321, 0.25)
    assert (frame.fps_numerator, frame.fps_denominator, frame.fps) == (30, 1, 30.0)
    assert frame["eyeLookDownLeft"] == np.float32(0.02) and frame["rightEyeRoll"] == np.float32(0.61)


def test_hand_made_packets_through_the_receiver(rx: LiveLinkReceiver, raw: socket.socket) -> None:
    curves = ramp()
    curves[52] = -0.25  # headYaw: negative values cross the wire too
    raw.sendto(hand_packet(curves, device=b"", subject=b""), rx.address)
    raw.sendto(hand_packet(curves, frame=5, rate=(60, 0)), rx.address)  # a denominator of 0 still parses
    poll_until(rx, lambda: rx.received == 2)
    assert rx.received == 2 and rx.malformed == 0
    got = rx.latest()
    assert got.frame == 5 and got.fps is None and got["headYaw"] == -0.25
    assert got.head_ypr[0] == pytest.approx(-math.pi / 4)


def test_pylivelinkface_style_header_is_the_same_bytes() -> None:
    """PyLiveLinkFace writes the version as a little-endian uint32 and the id as '$' + 36 characters:
    for a 36-byte id those are exactly our uint8 version + big-endian int32 length 36 (0x24 = '$')."""
    uid = "0f8fad5b-d9cb-469f-a165-70867728950e"
    head = struct.pack("<I", 6) + b"$" + uid.encode()
    assert head[:5] == struct.pack(">Bi", 6, 36)
    rest = struct.pack(">i", 6) + b"Python" + struct.pack(">ifiiB", 7, 0.5, 60, 1, 61) + struct.pack(">61f", *ramp())
    frame = decode(head + rest)
    assert (frame.device_id, frame.subject, frame.frame) == (uid, "Python", 7)


# --- malformed datagrams -------------------------------------------------------------------------
def _bad_datagrams() -> dict[str, tuple[bytes, str]]:
    good = hand_packet(ramp())
    nan, inf = list(ramp()), list(ramp())
    nan[3], inf[60] = float("nan"), float("-inf")
    garbage = np.random.default_rng(3).integers(0, 256, 400, dtype=np.uint8).tobytes()
    return {
        "empty": (b"", "truncated"),
        "one byte short": (good[:-1], "bytes of curves"),
        "header only": (good[:40], "truncated"),
        "trailing byte": (good + b"\0", "bytes of curves"),
        "oversized": (good + bytes(MAX_PACKET_BYTES), "oversized"),
        "jumbo": (bytes([6]) * 65000, "oversized"),
        "garbage": (bytes([6]) + garbage, "length"),
        "version 5": (hand_packet(ramp(), version=5), "version 5"),
        "version 7": (hand_packet(ramp(), version=7), "version 7"),
        "60 curves": (hand_packet(ramp()[:60], count=60, fmt=">60f") + bytes(8), "60 curves"),
        "count 62": (hand_packet(ramp(), count=62), "62 curves"),
        "name past the end": (bytes([6]) + struct.pack(">i", 250) + b"d" * 250 + struct.pack(">i", 256) + bytes(20),
                              "runs past"),
        "negative name length": (good[:1] + struct.pack(">i", -1) + good[5:], "outside"),
        "name too long": (hand_packet(ramp(), subject=b"x" * (MAX_NAME_BYTES + 1)), "outside"),
        "not utf-8": (hand_packet(ramp(), device=b"\xff\xfe\xfd"), "UTF-8"),
        "nan curve": (hand_packet(nan), "non-finite"),
        "inf curve": (hand_packet(inf), "non-finite"),
        "nan sub-frame": (hand_packet(ramp(), subframe=float("nan")), "non-finite"),
    }


BAD = _bad_datagrams()


@pytest.mark.parametrize("case", list(BAD))
def test_decode_refuses_with_one_error_type(case: str) -> None:
    data, reason = BAD[case]
    with pytest.raises(LiveLinkPacketError, match=reason):  # any other exception type fails the test
        decode(data)


def test_edge_cases_are_what_they_claim() -> None:
    assert len(hand_packet(ramp(), device=b"", subject=b"")) == MIN_PACKET_BYTES
    assert len(BAD["oversized"][0]) > MAX_PACKET_BYTES and len(BAD["one byte short"][0]) >= MIN_PACKET_BYTES
    assert MIN_PACKET_BYTES <= len(BAD["name past the end"][0]) < 9 + 250 + 256
    longest = LiveLinkFrame(ramp(), device_id="d" * MAX_NAME_BYTES, subject="é" * (MAX_NAME_BYTES // 2))
    assert len(encode(longest)) == MAX_PACKET_BYTES and decode(encode(longest)).subject == longest.subject


def test_receiver_skips_and_counts_malformed(rx: LiveLinkReceiver, raw: socket.socket) -> None:
    for data, _ in BAD.values():
        raw.sendto(data, rx.address)
    raw.sendto(hand_packet(ramp(), frame=77), rx.address)
    poll_until(rx, lambda: rx.received + rx.malformed == len(BAD) + 1)
    assert (rx.malformed, rx.received) == (len(BAD), 1)
    assert rx.latest().frame == 77 and rx.last_error is not None


def test_decode_never_raises_anything_else() -> None:
    """Every truncation and 3,000 seeded random byte edits of a valid packet: a frame or the error."""
    good = hand_packet(ramp())
    rng = np.random.default_rng(4)
    cases = [good[:n] for n in range(len(good))]
    for _ in range(3000):
        data = bytearray(good)
        for pos in rng.integers(0, len(good), rng.integers(1, 4)):
            data[pos] = rng.integers(0, 256)
        cases.append(bytes(data))
    decoded = 0
    for data in cases:
        try:
            decoded += isinstance(decode(data), LiveLinkFrame)
        except LiveLinkPacketError:
            pass
    assert 0 < decoded < len(cases)  # edits to curve bytes decode, edits to the header do not


def test_frames_that_could_not_be_encoded_are_refused() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        LiveLinkFrame([float("nan")] + [0.0] * 60)
    with pytest.raises(ValueError, match="shape"):
        LiveLinkFrame([0.0] * 52)
    with pytest.raises(ValueError, match="UTF-8 bytes"):
        LiveLinkFrame(ramp(), subject="x" * (MAX_NAME_BYTES + 1))
    with pytest.raises(ValueError, match="int32"):
        LiveLinkFrame(ramp(), frame=2**31)
    with pytest.raises(TypeError):
        LiveLinkFrame.from_arkit(["jawOpen"], [0.1], devce_id="typo")
    with pytest.raises(ValueError, match="eyes_ypr"):
        LiveLinkFrame.from_arkit([], [], eyes_ypr=[0.1, 0.2])


# --- eyeLook fill and rotations ------------------------------------------------------------------
def test_eye_look_fill_is_monotone_and_mirror_symmetric() -> None:
    angles = np.radians(np.linspace(-45, 45, 91))
    yaw = [eye_look_weights([[a, 0.0], [a, 0.0]]) for a in angles]
    pitch = [eye_look_weights([[0.0, a], [0.0, a]]) for a in angles]
    series = lambda ws, name: np.array([w[name] for w in ws])  # noqa: E731
    # gaze toward the subject's own left (yaw up): the left eye looks out, the right eye in
    for name, sign in (("eyeLookOutLeft", 1), ("eyeLookInRight", 1), ("eyeLookInLeft", -1), ("eyeLookOutRight", -1)):
        assert (sign * np.diff(series(yaw, name)) >= 0).all(), name
    for name, sign in (("eyeLookDownLeft", 1), ("eyeLookDownRight", 1), ("eyeLookUpLeft", -1), ("eyeLookUpRight", -1)):
        assert (sign * np.diff(series(pitch, name)) >= 0).all(), name
    mirrored = yaw[::-1]  # the same sweep with yaw negated
    np.testing.assert_array_equal(series(yaw, "eyeLookOutLeft"), series(mirrored, "eyeLookOutRight"))
    np.testing.assert_array_equal(series(yaw, "eyeLookInLeft"), series(mirrored, "eyeLookInRight"))
    np.testing.assert_array_equal(series(pitch, "eyeLookDownLeft"), series(pitch[::-1], "eyeLookUpLeft"))
    for w in yaw + pitch:
        for side in ("Left", "Right"):
            assert min(w[f"eyeLookIn{side}"], w[f"eyeLookOut{side}"]) == 0
            assert min(w[f"eyeLookUp{side}"], w[f"eyeLookDown{side}"]) == 0
        assert all(0.0 <= v <= 1.0 for v in w.values())
    at = {d: eye_look_weights([[math.radians(d), 0.0], [0.0, 0.0]])["eyeLookOutLeft"] for d in (0, 15, 30, 45)}
    assert at == pytest.approx({0: 0.0, 15: 0.5, 30: 1.0, 45: 1.0})  # a full weight at 30 degrees


def test_with_eye_look_reads_the_frames_own_eye_curves() -> None:
    eyes = np.radians([[-10.0, 20.0, 0.0], [-10.0, 20.0, 0.0]])  # toward the subject's right, down
    frame = LiveLinkFrame.from_arkit(["jawOpen"], [0.4], eyes_ypr=eyes)
    filled = frame.with_eye_look()
    assert filled["eyeLookInLeft"] == pytest.approx(1 / 3) and filled["eyeLookOutRight"] == pytest.approx(1 / 3)
    assert filled["eyeLookDownLeft"] == pytest.approx(2 / 3) and filled["eyeLookUpRight"] == 0
    assert filled["jawOpen"] == np.float32(0.4) and not frame["eyeLookInLeft"]
    np.testing.assert_array_equal(filled.curves[52:], frame.curves[52:])


def test_ypr_matrices() -> None:
    def r(axis: int, a: float) -> np.ndarray:
        c, s, m = math.cos(a), math.sin(a), np.eye(3)
        i, j = [(1, 2), (2, 0), (0, 1)][axis]  # right-handed rotation about x, y, z
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        return m

    ypr = np.random.default_rng(5).uniform([-3, -1.5, -3], [3, 1.5, 3], (50, 3))
    expected = np.stack([r(1, y) @ r(0, p) @ r(2, q) for y, p, q in ypr])
    np.testing.assert_allclose(ypr_to_matrix(ypr), expected, atol=1e-12)
    np.testing.assert_allclose(matrix_to_ypr(expected), ypr, atol=1e-9)
    z, y = np.array([0, 0, 1.0]), np.array([0, 1.0, 0])
    assert (ypr_to_matrix([0.3, 0, 0]) @ z)[0] > 0  # yaw > 0: the face turns toward +x, its own left
    assert (ypr_to_matrix([0, 0.3, 0]) @ z)[1] < 0  # pitch > 0: the face turns down
    assert (ypr_to_matrix([0, 0, 0.3]) @ y)[0] < 0  # roll > 0: the top of the head toward its right
