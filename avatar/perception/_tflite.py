"""Running MediaPipe's ``.tflite`` models with LiteRT (``ai-edge-litert``), custom ops included.

LiteRT runs every standard op. MediaPipe's attention FaceMesh model also contains three custom ops
(``Landmarks2TransformMatrix``, ``TransformTensorBilinear``, ``TransformLandmarks``, version 2)
that only MediaPipe's own binary registers. Rather than compiling an op library, we cut the model's
graph at those ops: each run of standard ops becomes a small sub-model (same tensors and weights,
fewer operators) run by LiteRT, and the custom ops run in between as NumPy functions written from
the ops' documented math (``mediapipe/util/tflite/operations/*.cc``: matrix from landmarks, bilinear
crop of a feature map, landmark transform).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from avatar.errors import AvatarError


def _interpreter(model: bytes, num_threads: int):
    # Imported here so that `import avatar.perception` stays cheap and works without the wheel.
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise AvatarError(
            "ai-edge-litert is not installed; install it with `pip install ai-edge-litert` "
            "(it runs the MediaPipe face models)."
        ) from e
    it = Interpreter(model_content=model, num_threads=int(num_threads))
    it.allocate_tensors()
    return it


class TfliteModel:
    """A model with only standard ops: ``model(x) -> list of outputs`` (each a NumPy copy)."""

    def __init__(self, path: str | Path, num_threads: int = 1) -> None:
        self.path = Path(path)
        self._it = _interpreter(self.path.read_bytes(), num_threads)
        self._in = self._it.get_input_details()[0]
        self._out = [d["index"] for d in self._it.get_output_details()]
        self.input_shape: tuple[int, ...] = tuple(int(v) for v in self._in["shape"])

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self._it.set_tensor(self._in["index"], np.ascontiguousarray(x, dtype=np.float32))
        self._it.invoke()
        return [self._it.get_tensor(i) for i in self._out]


# ---------------------------------------------------------------------------------------------
# Custom ops (v2 semantics). Shapes follow the tensors in the model.


def _rot2(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s], [s, c]], np.float64)


def landmarks_to_transform_matrix(landmarks: np.ndarray, opts: dict) -> np.ndarray:
    """[1, N, 3] landmarks -> [1, 4, 4] matrix taking output-crop pixels to feature-map pixels.

    The crop is the rotated bounding box of ``subset_idxs`` (rotation from the left/right
    landmarks), scaled by ``scale_x/scale_y``, sampled on an ``output_width x output_height`` grid.
    """
    lm = landmarks.reshape(-1, landmarks.shape[-1]).astype(np.float64)
    left, right = lm[int(opts["left_rotation_idx"]), :2], lm[int(opts["right_rotation_idx"]), :2]
    rotation = float(opts.get("target_rotation_radians", 0.0)) - math.atan2(
        right[1] - left[1], right[0] - left[0]
    )
    pts = lm[np.asarray(opts["subset_idxs"], np.int64), :2] @ _rot2(rotation).T
    hi, lo = pts.max(0), pts.min(0)
    size = hi - lo
    center = _rot2(-rotation) @ ((hi + lo) / 2.0)
    ow, oh = float(opts["output_width"]), float(opts["output_height"])
    m = np.eye(4)
    m[:2, :2] = _rot2(-rotation) @ np.diag(
        [float(opts["scale_x"]) * size[0] / ow, float(opts["scale_y"]) * size[1] / oh]
    )
    # translation: centre the output grid (shift by -size/2) before rotating/scaling, then move to
    # the crop centre.
    m[:2, 3] = center + m[:2, :2] @ np.array([-ow / 2.0, -oh / 2.0])
    return m.astype(np.float32)[None]


def transform_tensor_bilinear(features: np.ndarray, matrix: np.ndarray, opts: dict) -> np.ndarray:
    """Sample [1, H, W, C] features on an output grid mapped through ``matrix`` (pixel centres
    aligned: the v2 op shifts by half a pixel on both sides); zero outside the map."""
    fh, fw = features.shape[1:3]
    oh, ow = int(opts["output_height"]), int(opts["output_width"])
    m = matrix.reshape(4, 4).astype(np.float64)
    rx, ry = m[0].copy(), m[1].copy()
    rx[3] += 0.5 * (rx[0] + rx[1]) - 0.5
    ry[3] += 0.5 * (ry[0] + ry[1]) - 0.5
    gy, gx = np.mgrid[0:oh, 0:ow].astype(np.float64)
    tx = rx[0] * gx + rx[1] * gy + rx[3]
    ty = ry[0] * gx + ry[1] * gy + ry[3]
    inside = (tx >= 0) & (tx <= fw - 1) & (ty >= 0) & (ty <= fh - 1)
    x0, y0 = np.floor(tx), np.floor(ty)
    fx, fy = (tx - x0)[..., None], (ty - y0)[..., None]
    # One zero pixel of padding: neighbours that fall outside the map read 0, as in the op; indices
    # further out are clipped into the padding (those samples are zeroed by `inside` anyway).
    f = np.pad(features[0], ((1, 1), (1, 1), (0, 0)))
    xa = np.clip(x0 + 1, 0, fw + 1).astype(np.intp)
    xb = np.clip(x0 + 2, 0, fw + 1).astype(np.intp)
    ya = np.clip(y0 + 1, 0, fh + 1).astype(np.intp)
    yb = np.clip(y0 + 2, 0, fh + 1).astype(np.intp)
    top = (1 - fx) * f[ya, xa] + fx * f[ya, xb]
    bottom = (1 - fx) * f[yb, xa] + fx * f[yb, xb]
    out = (fy * bottom + (1 - fy) * top) * inside[..., None]
    return out.astype(np.float32)[None]


def transform_landmarks(landmarks: np.ndarray, matrix: np.ndarray, opts: dict) -> np.ndarray:
    """Map [1, N, D] landmarks' x, y through the first two rows of a [1, 4, 4] matrix."""
    m = matrix.reshape(4, 4).astype(np.float64)
    lm = landmarks.astype(np.float64).copy()
    xy = lm[..., :2].copy()  # a copy: x is overwritten before y is computed
    lm[..., 0] = m[0, 0] * xy[..., 0] + m[0, 1] * xy[..., 1] + m[0, 3]
    lm[..., 1] = m[1, 0] * xy[..., 0] + m[1, 1] * xy[..., 1] + m[1, 3]
    return lm.astype(np.float32)


_CUSTOM_OPS: dict[str, Callable[..., np.ndarray]] = {
    "Landmarks2TransformMatrix": landmarks_to_transform_matrix,
    "TransformTensorBilinear": transform_tensor_bilinear,
    "TransformLandmarks": transform_landmarks,
}


# ---------------------------------------------------------------------------------------------
# Graph splitting


@dataclass
class _Step:
    kind: str  # "litert" or a custom op name
    inputs: list[int]  # tensor ids in the original graph
    outputs: list[int]
    run: Callable[..., list[np.ndarray]]


class SplitTfliteModel:
    """A model whose custom ops (from :data:`_CUSTOM_OPS`) run in NumPy between LiteRT sub-models.

    ``model(x)`` returns the original model's outputs in order (NumPy copies)."""

    def __init__(self, path: str | Path, num_threads: int = 1) -> None:
        import flatbuffers
        from ai_edge_litert import schema_py_generated as schema
        from flatbuffers import flexbuffers

        self.path = Path(path)
        buf = self.path.read_bytes()
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
        if len(model.subgraphs) != 1:
            raise AvatarError(f"{self.path}: expected a single-subgraph model")
        graph = model.subgraphs[0]
        codes = model.operatorCodes
        ops = list(graph.operators)
        tensors = graph.tensors
        const = {
            t for t, tensor in enumerate(tensors)
            if tensor.buffer and model.buffers[tensor.buffer].data is not None
            and len(model.buffers[tensor.buffer].data) > 0
        }
        self._graph_inputs = [int(t) for t in graph.inputs]
        self._graph_outputs = [int(t) for t in graph.outputs]
        self.input_shape: tuple[int, ...] = tuple(int(v) for v in tensors[self._graph_inputs[0]].shape)

        def custom_name(op) -> str | None:
            code = codes[op.opcodeIndex]
            return code.customCode.decode() if code.customCode else None

        # Consecutive standard ops form one LiteRT segment.
        groups: list[tuple[str, list[int]]] = []
        for i, op in enumerate(ops):
            name = custom_name(op)
            if name is None:
                if groups and groups[-1][0] == "litert":
                    groups[-1][1].append(i)
                else:
                    groups.append(("litert", [i]))
            else:
                if name not in _CUSTOM_OPS:
                    raise AvatarError(f"{self.path}: custom op {name} has no implementation here")
                groups.append((name, [i]))

        def used_after(g_index: int) -> set[int]:
            later: set[int] = set(self._graph_outputs)
            for _, idxs in groups[g_index + 1:]:
                for i in idxs:
                    later.update(int(t) for t in ops[i].inputs if t >= 0)
            return later

        all_buffers = model.buffers
        self._steps: list[_Step] = []
        for gi, (kind, idxs) in enumerate(groups):
            produced = {int(t) for i in idxs for t in ops[i].outputs}
            consumed = [int(t) for i in idxs for t in ops[i].inputs if t >= 0]
            if kind == "litert":
                seg_in = sorted({t for t in consumed if t not in produced and t not in const})
                seg_out = sorted(produced & used_after(gi))
                # Keep only the weights this segment reads, so each sub-model stays small.
                keep = {tensors[t].buffer for i in idxs for t in ops[i].inputs if t >= 0}
                graph.operators = [ops[i] for i in idxs]
                graph.inputs, graph.outputs = seg_in, seg_out
                model.buffers = [
                    b if k in keep or k == 0 else schema.BufferT() for k, b in enumerate(all_buffers)
                ]
                builder = flatbuffers.Builder(1 << 20)
                builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
                self._steps.append(_Step(kind, seg_in, seg_out, self._litert_runner(bytes(builder.Output()), num_threads)))
            else:
                op = ops[idxs[0]]
                opts = flexbuffers.Loads(bytes(op.customOptions)) if op.customOptions is not None else {}
                fn = _CUSTOM_OPS[kind]
                self._steps.append(
                    _Step(kind, [int(t) for t in op.inputs], [int(t) for t in op.outputs],
                          lambda *xs, _fn=fn, _o=opts: [_fn(*xs, _o)])
                )
        # Restore the parsed model object (it is dropped right after, but leave it consistent).
        graph.operators, model.buffers = ops, all_buffers

    @staticmethod
    def _litert_runner(model: bytes, num_threads: int) -> Callable[..., list[np.ndarray]]:
        it = _interpreter(model, num_threads)
        ins = [d["index"] for d in it.get_input_details()]
        outs = [d["index"] for d in it.get_output_details()]

        def run(*xs: np.ndarray) -> list[np.ndarray]:
            for i, x in zip(ins, xs):
                it.set_tensor(i, x)
            it.invoke()
            return [it.get_tensor(o) for o in outs]

        return run

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        env: dict[int, np.ndarray] = {self._graph_inputs[0]: np.ascontiguousarray(x, np.float32)}
        for step in self._steps:
            results = step.run(*[env[t] for t in step.inputs])
            env.update(zip(step.outputs, results))
        return [env[t] for t in self._graph_outputs]
