"""Live Link Face: the UDP packets of Epic's iPhone app, which Unreal's ARKit Live Link source also
reads, decoded into :class:`LiveLinkFrame` and encoded back; a receiver and a sender.

Packet layout, version 6 (every multi-byte field big-endian, Unreal's "network byte order"
serializer ``FNboSerializeToBuffer``)::

    uint8    packet version = 6
    int32    n, then n bytes of UTF-8: device id        (an FName sent as a length-prefixed string)
    int32    n, then n bytes of UTF-8: subject name
    int32    frame number      \\  FQualifiedFrameTime: FFrameTime (frame, sub-frame)
    float32  sub-frame          |  and FFrameRate (numerator, denominator)
    int32    rate numerator     |
    int32    rate denominator  /
    uint8    curve count = 61
    61 x float32 curves, in the order of :data:`CURVE_NAMES` (Unreal's ``EARFaceBlendShape`` enum)

A packet with both names empty has 270 bytes. Unreal sizes its receive buffer for 256 characters
per name, so names here are limited to :data:`MAX_NAME_BYTES` UTF-8 bytes each, and a valid packet
is at most :data:`MAX_PACKET_BYTES` long; :func:`decode` refuses anything else, including bytes
left over after the 61st curve.

Curves 0-51 are the ARKit blendshape weights, in [0, 1]. Curves 52-60 are rotations in half-turns:
Unreal's ARKit conversion divides an ``FRotator``'s degrees by 180, so +-1 is +-180 degrees and
``radians = value * pi``. In the head model's frame (x = the subject's own left, y up, z out of the
face: ARKit's face frame, and ours) and Unreal's default, unmirrored face direction, these are the
angles of ``R = R_y(yaw) @ R_x(pitch) @ R_z(roll)`` (right-handed rotations about those axes):

- yaw > 0: the head (eye) turns toward the subject's own left;
- pitch > 0: the head (eye) turns down;
- roll > 0: the head tilts toward the subject's own right shoulder.

The head rotation is relative to the phone's camera (identity: facing it), the eyes' relative to
the head. The signs follow from Unreal's conversion chain (ARKit -> Unreal axes, ``FRotator``, yaw
and roll negated when not mirrored); a mirrored sender flips yaw and roll and swaps Left/Right
curve names. They were not checked against a phone.

Sources (read for the facts above; the code here is our own):

- Unreal Engine, ``Engine/Plugins/Runtime/AR/AppleAR/AppleARKitFaceSupport/Source/
  AppleARKitFaceSupport/Private/AppleARKitLiveLinkSource.cpp`` (version 6 history comment, packet
  writer and reader, size bounds, the 61-curve check) and ``.../AppleARKitFaceMeshConversion.h``
  (``ToBlendShapeMap``: rotations as degrees / 180, the unmirrored sign flips);
  ``EARFaceBlendShape`` (AugmentedReality) for the curve order.
- PyLiveLinkFace (github.com/JimWest/PyLiveLinkFace, ``pylivelinkface/pylivelinkface.py``): the
  same order and big-endian fields. It writes the version as a little-endian uint32 followed by
  ``"$"`` + a 36-character id: byte-for-byte the layout above for 36-byte ids only (0x24 = 36).

Receiving binds 127.0.0.1 by default: to hear a phone on the network, pass its interface (or
``"0.0.0.0"``) explicitly.

>>> frame = LiveLinkFrame.from_arkit(["jawOpen"], [0.5], head_ypr=[0.1, 0.0, 0.0])
>>> decode(encode(frame))["jawOpen"]
0.5
"""
from __future__ import annotations

import math
import select
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import TracebackType

import numpy as np
from numpy.typing import ArrayLike

from avatar.errors import AvatarError

PACKET_VERSION = 6
DEFAULT_PORT = 11111
NUM_CURVES = 61
MAX_NAME_BYTES = 256

#: The 52 ARKit blendshapes in packet order, spelled as Apple (and AnnyHead) spell them.
ARKIT_NAMES = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight", "jawForward", "jawLeft", "jawRight", "jawOpen", "mouthClose", "mouthFunnel",
    "mouthPucker", "mouthLeft", "mouthRight", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthPressLeft", "mouthPressRight",
    "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight", "browDownLeft",
    "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff", "cheekSquintLeft",
    "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)  # fmt: skip
#: Curves 52-60: head, left eye, right eye; (yaw, pitch, roll) each, in half-turns.
ROTATION_NAMES = ("headYaw", "headPitch", "headRoll", "leftEyeYaw", "leftEyePitch", "leftEyeRoll",
                  "rightEyeYaw", "rightEyePitch", "rightEyeRoll")  # fmt: skip
CURVE_NAMES = ARKIT_NAMES + ROTATION_NAMES
_HEAD = slice(52, 55)
_EYES = slice(55, 61)

#: Eye rotation that makes an ``eyeLook*`` weight 1 in :func:`eye_look_weights`. ARKit documents
#: no angle; KMP-FaceLink (github.com/rioX432/KMP-FaceLink, ``util/GazeEstimator.kt``) maps a full
#: weight to 30 degrees ("typically saturate around 30-35 degrees").
EYE_LOOK_FULL_ANGLE = math.radians(30.0)

_LEN = struct.Struct(">i")
_TIME_AND_COUNT = struct.Struct(">ifiiB")  # frame, sub-frame, rate numerator, denominator, curve count
_CURVE_DTYPE = np.dtype(">f4")
_CURVE_BYTES = NUM_CURVES * _CURVE_DTYPE.itemsize
MIN_PACKET_BYTES = 1 + 2 * _LEN.size + _TIME_AND_COUNT.size + _CURVE_BYTES
MAX_PACKET_BYTES = MIN_PACKET_BYTES + 2 * MAX_NAME_BYTES
_INT32 = (-(2**31), 2**31 - 1)
_INDEX = {name.lower(): i for i, name in enumerate(CURVE_NAMES)}


class LiveLinkPacketError(AvatarError, ValueError):
    """A datagram that is not a well-formed version-6 Live Link Face packet."""


def curve_index(name: str) -> int:
    """Position of curve ``name`` in a packet. Apple's spelling (``eyeBlinkLeft``) and Unreal's curve
    names (``EyeBlinkLeft``, from its enum) both match: names compare case-insensitively.

    >>> curve_index("jawOpen"), curve_index("HeadYaw")
    (17, 52)
    """
    try:
        return _INDEX[name.lower()]
    except KeyError:
        raise KeyError(f"{name!r} is not a Live Link Face curve") from None


def _arkit_index(name: str) -> int:
    i = curve_index(name)
    if i >= len(ARKIT_NAMES):
        raise KeyError(f"{name!r} is a rotation, not an ARKit blendshape: pass it as head_ypr / eyes_ypr")
    return i


def _check_name(value: str, what: str) -> None:
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} is not encodable as UTF-8: {e}") from None
    if size > MAX_NAME_BYTES:
        raise ValueError(f"{what} has {size} UTF-8 bytes; at most {MAX_NAME_BYTES} fit a Live Link packet")


def _shaped(value: ArrayLike, shape: tuple[int, ...], what: str) -> np.ndarray:
    a = np.asarray(value, dtype=np.float64)
    if a.shape != shape:
        raise ValueError(f"{what} must have shape {list(shape)}, got {list(a.shape)}")
    return a


@dataclass(frozen=True, eq=False)
class LiveLinkFrame:
    """One packet's content. ``curves`` is a read-only float32 copy in :data:`CURVE_NAMES` order;
    ``frame[name]`` reads one curve by name. Non-finite curves, names over :data:`MAX_NAME_BYTES`
    and header integers outside int32 are refused (ValueError), so every frame encodes."""

    curves: np.ndarray  # [61] float32
    device_id: str = ""
    subject: str = ""
    frame: int = 0
    subframe: float = 0.0
    fps_numerator: int = 60
    fps_denominator: int = 1

    def __post_init__(self) -> None:
        curves = np.array(self.curves, dtype=np.float32)
        if curves.shape != (NUM_CURVES,):
            raise ValueError(f"curves must have shape ({NUM_CURVES},), got {curves.shape}")
        if not np.isfinite(curves).all():
            raise ValueError(f"non-finite curves: {[CURVE_NAMES[i] for i in np.flatnonzero(~np.isfinite(curves))]}")
        curves.setflags(write=False)
        object.__setattr__(self, "curves", curves)
        _check_name(self.device_id, "device_id")
        _check_name(self.subject, "subject")
        for what in ("frame", "fps_numerator", "fps_denominator"):
            value = getattr(self, what)
            if int(value) != value or not _INT32[0] <= int(value) <= _INT32[1]:
                raise ValueError(f"{what}={value} is not an int32")
            object.__setattr__(self, what, int(value))
        subframe = np.float32(self.subframe)
        if not np.isfinite(subframe):
            raise ValueError(f"subframe must be finite, got {self.subframe}")
        object.__setattr__(self, "subframe", float(subframe))

    @classmethod
    def from_arkit(cls, names: Sequence[str], weights: ArrayLike, *, head_ypr: ArrayLike | None = None,
                   eyes_ypr: ArrayLike | None = None, **header) -> LiveLinkFrame:
        """A frame from ARKit weights named ``names`` (e.g. a head model's ``expression_names``; a
        name that is not an ARKit blendshape raises KeyError), the head's ``(yaw, pitch, roll)`` and
        the eyes' ``[[left], [right]]`` ``(yaw, pitch, roll)`` in radians (conventions: module doc).
        Curves not given are 0. ``header``: the other fields (``device_id=``, ``frame=``, ...)."""
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if len(names) != w.size:
            raise ValueError(f"{len(names)} names but {w.size} weights")
        curves = np.zeros(NUM_CURVES, np.float32)
        curves[[_arkit_index(n) for n in names]] = w
        if head_ypr is not None:
            curves[_HEAD] = _shaped(head_ypr, (3,), "head_ypr") / math.pi
        if eyes_ypr is not None:
            curves[_EYES] = _shaped(eyes_ypr, (2, 3), "eyes_ypr").reshape(6) / math.pi
        return cls(curves, **header)

    def __getitem__(self, name: str) -> float:
        return float(self.curves[curve_index(name)])

    def as_dict(self) -> dict[str, float]:
        """Every curve by its :data:`CURVE_NAMES` name."""
        return {name: float(v) for name, v in zip(CURVE_NAMES, self.curves)}

    def weights(self, names: Sequence[str]) -> np.ndarray:
        """``[len(names)]`` float32 ARKit weights in the order of ``names`` (e.g. a head model's
        ``expression_names``); KeyError for a name that is not an ARKit blendshape."""
        return self.curves[[_arkit_index(n) for n in names]].copy()

    @property
    def head_ypr(self) -> np.ndarray:
        """``[3]`` head (yaw, pitch, roll) in radians (conventions: module doc)."""
        return self.curves[_HEAD].astype(np.float64) * math.pi

    @property
    def eyes_ypr(self) -> np.ndarray:
        """``[2, 3]`` (left, right) eye (yaw, pitch, roll) in radians, relative to the head."""
        return self.curves[_EYES].astype(np.float64).reshape(2, 3) * math.pi

    @property
    def fps(self) -> float | None:
        """The frame rate, or None when the packet's rate is not positive (some senders write a
        denominator of 0)."""
        if self.fps_numerator <= 0 or self.fps_denominator <= 0:
            return None
        return self.fps_numerator / self.fps_denominator

    def with_eye_look(self, full_angle: float = EYE_LOOK_FULL_ANGLE) -> LiveLinkFrame:
        """This frame with the eight ``eyeLook*`` weights derived from its eye rotations (see
        :func:`eye_look_weights`), for consumers that read only ARKit weights."""
        curves = self.curves.copy()
        for name, value in eye_look_weights(self.eyes_ypr, full_angle).items():
            curves[curve_index(name)] = value
        return replace(self, curves=curves)


def eye_look_weights(eyes_ypr: ArrayLike, full_angle: float = EYE_LOOK_FULL_ANGLE) -> dict[str, float]:
    """The eight ARKit ``eyeLook{Down,In,Out,Up}{Left,Right}`` weights of eye rotations.

    Args:
        eyes_ypr: ``[2, 2]`` or ``[2, 3]``: (left, right) eye (yaw, pitch[, roll]) in radians, yaw
            > 0 toward the subject's own left, pitch > 0 down (module doc); roll is ignored.
        full_angle: the rotation (radians) at which a weight reaches 1; weights are linear in the
            angle below it, clamped to [0, 1] (:data:`EYE_LOOK_FULL_ANGLE`: 30 degrees).

    "Out" is away from the nose: the left eye looks out when it turns toward the subject's left, the
    right eye looks in. At most one of In/Out and one of Up/Down is non-zero per eye.

    >>> w = eye_look_weights([[math.radians(15), 0.0], [math.radians(15), 0.0]])
    >>> round(w["eyeLookOutLeft"], 3), round(w["eyeLookInRight"], 3), w["eyeLookInLeft"]
    (0.5, 0.5, 0.0)
    """
    if not full_angle > 0:
        raise ValueError(f"full_angle must be positive, got {full_angle}")
    ypr = np.asarray(eyes_ypr, dtype=np.float64)
    if ypr.ndim != 2 or ypr.shape[0] != 2 or ypr.shape[1] not in (2, 3):
        raise ValueError(f"eyes_ypr must have shape [2, 2] or [2, 3], got {ypr.shape}")
    out = {}
    for side, sign, (yaw, pitch) in (("Left", 1.0, ypr[0, :2]), ("Right", -1.0, ypr[1, :2])):
        outward, down = sign * yaw / full_angle, pitch / full_angle
        out[f"eyeLookOut{side}"] = float(np.clip(outward, 0.0, 1.0))
        out[f"eyeLookIn{side}"] = float(np.clip(-outward, 0.0, 1.0))
        out[f"eyeLookDown{side}"] = float(np.clip(down, 0.0, 1.0))
        out[f"eyeLookUp{side}"] = float(np.clip(-down, 0.0, 1.0))
    return out


def ypr_to_matrix(ypr: ArrayLike) -> np.ndarray:
    """``[..., 3]`` (yaw, pitch, roll) radians -> ``[..., 3, 3]`` ``R_y(yaw) @ R_x(pitch) @ R_z(roll)``,
    the rotation a Live Link (yaw, pitch, roll) stands for in the head model's frame."""
    a = np.asarray(ypr, dtype=np.float64)
    (cy, cp, cr), (sy, sp, sr) = np.moveaxis(np.cos(a), -1, 0), np.moveaxis(np.sin(a), -1, 0)
    rows = [[cy * cr + sy * sp * sr, sy * sp * cr - cy * sr, sy * cp],
            [cp * sr, cp * cr, -sp],
            [cy * sp * sr - sy * cr, sy * sr + cy * sp * cr, cy * cp]]  # fmt: skip
    return np.stack([np.stack(r, -1) for r in rows], -2)


def matrix_to_ypr(matrix: ArrayLike) -> np.ndarray:
    """Inverse of :func:`ypr_to_matrix` (pitch in [-pi/2, pi/2], yaw and roll in (-pi, pi])."""
    m = np.asarray(matrix, dtype=np.float64)
    yaw = np.arctan2(m[..., 0, 2], m[..., 2, 2])
    pitch = np.arcsin(np.clip(-m[..., 1, 2], -1.0, 1.0))
    roll = np.arctan2(m[..., 1, 0], m[..., 1, 1])
    return np.stack([yaw, pitch, roll], -1)


def encode(frame: LiveLinkFrame) -> bytes:
    """The version-6 packet of ``frame`` (layout: module doc)."""
    device, subject = frame.device_id.encode("utf-8"), frame.subject.encode("utf-8")
    time_and_count = _TIME_AND_COUNT.pack(frame.frame, frame.subframe, frame.fps_numerator, frame.fps_denominator,
                                          NUM_CURVES)  # fmt: skip
    return b"".join((bytes((PACKET_VERSION,)), _LEN.pack(len(device)), device, _LEN.pack(len(subject)), subject,
                     time_and_count, frame.curves.astype(_CURVE_DTYPE).tobytes()))  # fmt: skip


def _read_name(data: memoryview, pos: int, what: str) -> tuple[str, int]:
    if len(data) - pos < _LEN.size:
        raise LiveLinkPacketError(f"truncated in the {what} length")
    (size,) = _LEN.unpack_from(data, pos)
    pos += _LEN.size
    if not 0 <= size <= MAX_NAME_BYTES:
        raise LiveLinkPacketError(f"{what} length {size} is outside [0, {MAX_NAME_BYTES}]")
    if pos + size > len(data):
        raise LiveLinkPacketError(f"{what} length {size} runs past the end of the packet")
    try:
        return bytes(data[pos : pos + size]).decode("utf-8"), pos + size
    except UnicodeDecodeError:
        raise LiveLinkPacketError(f"{what} is not valid UTF-8") from None


def decode(data: bytes | bytearray | memoryview) -> LiveLinkFrame:
    """The frame in a version-6 packet. Any malformed packet raises :class:`LiveLinkPacketError`
    (and nothing else): too short or too long, another version, names too long, running past the end
    or not UTF-8, a curve count other than 61, bytes after the curves, non-finite curves."""
    view = memoryview(data).cast("B")
    if len(view) < MIN_PACKET_BYTES:
        raise LiveLinkPacketError(f"truncated: {len(view)} bytes, a packet has at least {MIN_PACKET_BYTES}")
    if len(view) > MAX_PACKET_BYTES:
        raise LiveLinkPacketError(f"oversized: {len(view)} bytes, a packet has at most {MAX_PACKET_BYTES}")
    if view[0] != PACKET_VERSION:
        raise LiveLinkPacketError(f"packet version {view[0]}, expected {PACKET_VERSION}")
    device_id, pos = _read_name(view, 1, "device id")
    subject, pos = _read_name(view, pos, "subject name")
    if len(view) - pos < _TIME_AND_COUNT.size:
        raise LiveLinkPacketError("truncated in the frame time")
    frame, subframe, numerator, denominator, count = _TIME_AND_COUNT.unpack_from(view, pos)
    if count != NUM_CURVES:
        raise LiveLinkPacketError(f"{count} curves, expected {NUM_CURVES}")
    pos += _TIME_AND_COUNT.size
    if len(view) - pos != _CURVE_BYTES:
        raise LiveLinkPacketError(f"{len(view) - pos} bytes of curves, expected {_CURVE_BYTES}")
    curves = np.frombuffer(view, dtype=_CURVE_DTYPE, count=NUM_CURVES, offset=pos)
    if not (np.isfinite(curves).all() and math.isfinite(subframe)):
        raise LiveLinkPacketError("non-finite curve or sub-frame")
    return LiveLinkFrame(curves, device_id, subject, frame, subframe, numerator, denominator)


def _udp_address(host: str, port: int, passive: bool = False) -> tuple[int, tuple]:
    """(family, socket address) of ``host:port`` for UDP, IPv4 or IPv6."""
    flags = socket.AI_PASSIVE if passive else 0
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=flags)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise AvatarError(f"cannot resolve Live Link address {host}:{port}: {e}") from None
    return family, address


class LiveLinkReceiver:
    """Live Link Face packets arriving on a UDP port; nothing blocks longer than asked.

    ``received`` counts valid frames, ``malformed`` skipped datagrams (``last_error`` says why the
    latest was refused); receiving never raises on a bad datagram. ``port=0`` binds a free port
    (``receiver.port`` tells which).

    >>> with LiveLinkReceiver(port=0) as rx:                 # doctest: +SKIP
    ...     frame = rx.poll(timeout=0.5)                   # newest frame, or None after 0.5 s
    """

    #: Datagrams read per :meth:`poll` at most, so a flood cannot hold the caller.
    max_drain = 4096

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        family, address = _udp_address(host, port, passive=True)
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.bind(address)
            self._sock.setblocking(False)
        except OSError as e:
            self._sock.close()
            raise AvatarError(f"cannot listen for Live Link Face on {host}:{port}: {e}") from None
        self.received = 0
        self.malformed = 0
        self.last_error: str | None = None
        self._latest: LiveLinkFrame | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) this receiver is bound to."""
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        return self.address[1]

    def poll(self, timeout: float = 0.0) -> LiveLinkFrame | None:
        """Read every pending datagram (waiting up to ``timeout`` seconds for the first) and return
        the newest valid frame among them, or None when none came."""
        if timeout > 0 and not select.select([self._sock], [], [], timeout)[0]:
            return None
        newest = None
        for _ in range(self.max_drain):
            try:
                data = self._sock.recv(MAX_PACKET_BYTES + 1)  # one byte more: an oversized one shows
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionError:  # Windows reports an earlier send's ICMP error on the next read
                continue
            frame = self._accept(data)
            if frame is not None:
                newest = frame
        return newest

    def latest(self) -> LiveLinkFrame | None:
        """The newest valid frame received so far (pending datagrams read first, without waiting)."""
        self.poll()
        return self._latest

    def _accept(self, data: bytes) -> LiveLinkFrame | None:
        try:
            frame = decode(data)
        except LiveLinkPacketError as e:
            self.malformed += 1
            self.last_error = str(e)
            return None
        self.received += 1
        self._latest = frame
        return frame

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> LiveLinkReceiver:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class LiveLinkSender:
    """Sends Live Link Face packets to ``host:port`` (e.g. Unreal's Live Link, "Apple ARKit" source)
    under one device id and subject name; ``sent`` counts packets.

    >>> with LiveLinkSender("127.0.0.1", 11111) as tx:      # doctest: +SKIP
    ...     tx.send_tracked(head.expression_names, weights, head_ypr=ypr, eyes_ypr=eyes)
    """

    def __init__(self, host: str, port: int = DEFAULT_PORT, *, device_id: str = "avatar", subject: str = "avatar",
                 fps: tuple[int, int] = (30, 1)) -> None:  # fmt: skip
        _check_name(device_id, "device_id")
        _check_name(subject, "subject")
        family, self._address = _udp_address(host, port)
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self.device_id, self.subject, self.fps = device_id, subject, fps
        self.sent = 0
        self._next_frame = 0

    def send(self, frame: LiveLinkFrame) -> int:
        """Send ``frame`` as it is; returns the bytes sent (socket errors propagate)."""
        n = self._sock.sendto(encode(frame), self._address)
        self.sent += 1
        return n

    def send_tracked(self, names: Sequence[str], weights: ArrayLike, *, head_ypr: ArrayLike | None = None,
                     eyes_ypr: ArrayLike | None = None, fill_eye_look: bool = True,
                     frame: int | None = None) -> LiveLinkFrame:  # fmt: skip
        """Send tracked ARKit ``weights`` (named ``names``), head and eye rotations (radians, as in
        :meth:`LiveLinkFrame.from_arkit`) under this sender's header. ``fill_eye_look`` derives the
        ``eyeLook*`` weights from ``eyes_ypr`` (the tracker holds them at 0 and turns the eye
        joints instead). ``frame`` defaults to one more than the last sent. Returns what was sent."""
        number = self._next_frame if frame is None else frame
        out = LiveLinkFrame.from_arkit(names, weights, head_ypr=head_ypr, eyes_ypr=eyes_ypr,
                                       device_id=self.device_id, subject=self.subject, frame=number,
                                       fps_numerator=self.fps[0], fps_denominator=self.fps[1])  # fmt: skip
        if fill_eye_look and eyes_ypr is not None:
            out = out.with_eye_look()
        self.send(out)
        self._next_frame = (out.frame + 1) & 0x7FFFFFFF
        return out

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> LiveLinkSender:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = [
    "ARKIT_NAMES", "CURVE_NAMES", "DEFAULT_PORT", "EYE_LOOK_FULL_ANGLE", "MAX_NAME_BYTES", "MAX_PACKET_BYTES",
    "MIN_PACKET_BYTES", "NUM_CURVES", "PACKET_VERSION", "ROTATION_NAMES", "LiveLinkFrame", "LiveLinkPacketError",
    "LiveLinkReceiver", "LiveLinkSender", "curve_index", "decode", "encode", "eye_look_weights", "matrix_to_ypr",
    "ypr_to_matrix",
]
