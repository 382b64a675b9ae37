"""GLB export: round trip through an independent numpy glTF evaluator (morph targets, skin,
animation), the Khronos validator and three.js's GLTFLoader (Node)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pygltflib as gl
import pytest
import torch

from avatar.export import GltfAnimation, export_glb
from avatar.export.gltf import limit_influences, matrix_to_quaternion_xyzw
from avatar.models.rotations import axis_angle_to_matrix

_DTYPES = {5126: np.float32, 5121: np.uint8, 5123: np.uint16, 5125: np.uint32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}


# --- a small independent glTF reader/evaluator (numpy) ----------------------------------------------
def read_accessor(g: gl.GLTF2, index: int) -> np.ndarray:
    blob = g.binary_blob()
    acc = g.accessors[index]
    dt, width = _DTYPES[acc.componentType], _WIDTH[acc.type]

    def view_array(view: int, offset: int, count: int, dtype, w: int) -> np.ndarray:
        bv = g.bufferViews[view]
        start = (bv.byteOffset or 0) + (offset or 0)
        return np.frombuffer(blob, dtype=dtype, count=count * w, offset=start).reshape(count, w)

    out = (view_array(acc.bufferView, acc.byteOffset, acc.count, dt, width).astype(np.float64)
           if acc.bufferView is not None else np.zeros((acc.count, width)))
    if acc.sparse is not None:
        s = acc.sparse
        idx = view_array(s.indices.bufferView, s.indices.byteOffset, s.count, _DTYPES[s.indices.componentType], 1)[:, 0]
        assert np.all(np.diff(idx.astype(np.int64)) > 0), "sparse indices must increase strictly"
        out[idx] = view_array(s.values.bufferView, s.values.byteOffset, s.count, dt, width)
    return out


def target_position(target) -> int:
    # pygltflib loads morph targets as plain dicts
    return target["POSITION"] if isinstance(target, dict) else target.POSITION


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def node_matrix(node: gl.Node, rotation=None, translation=None) -> np.ndarray:
    m = np.eye(4)
    q = rotation if rotation is not None else (node.rotation or [0, 0, 0, 1])
    t = translation if translation is not None else (node.translation or [0, 0, 0])
    m[:3, :3] = quat_to_matrix(np.asarray(q, dtype=np.float64))
    m[:3, 3] = t
    return m


def evaluate_glb(g: gl.GLTF2, morph_weights: np.ndarray, overrides: dict[int, dict[str, np.ndarray]] | None = None) -> np.ndarray:
    """Morph + skin the first mesh as the glTF spec says; ``overrides[node] = {"rotation"|"translation": ...}``."""
    overrides = overrides or {}
    prim = g.meshes[0].primitives[0]
    pos = read_accessor(g, prim.attributes.POSITION)
    for w, tgt in zip(morph_weights, prim.targets):
        if w != 0:
            pos = pos + w * read_accessor(g, target_position(tgt))
    parent = {c: i for i, n in enumerate(g.nodes) for c in (n.children or [])}
    world: dict[int, np.ndarray] = {}

    def world_of(i: int) -> np.ndarray:
        if i not in world:
            local = node_matrix(g.nodes[i], **overrides.get(i, {}))
            world[i] = (world_of(parent[i]) @ local) if i in parent else local
        return world[i]

    skin = g.skins[0]
    ibm = read_accessor(g, skin.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1)
    jm = np.stack([world_of(j) @ ibm[k] for k, j in enumerate(skin.joints)])
    joints = read_accessor(g, prim.attributes.JOINTS_0).astype(np.int64)
    weights = read_accessor(g, prim.attributes.WEIGHTS_0)
    blend = np.einsum("vk,vkij->vij", weights, jm[joints])
    return np.einsum("vij,vj->vi", blend[:, :3, :3], pos) + blend[:, :3, 3]


def animation_overrides(g: gl.GLTF2, frame: int) -> tuple[np.ndarray, dict[int, dict[str, np.ndarray]]]:
    anim = g.animations[0]
    n_targets = len(g.meshes[0].primitives[0].targets)
    weights, over = np.zeros(n_targets), {}
    for ch in anim.channels:
        s = anim.samplers[ch.sampler]
        out = read_accessor(g, s.output)
        if ch.target.path == "weights":
            weights = out.reshape(-1, n_targets)[frame]
        else:
            over.setdefault(ch.target.node, {})[ch.target.path] = out[frame]
    return weights, over


# --- fixtures --------------------------------------------------------------------------------------
N_FRAMES = 6


def _animation() -> GltfAnimation:
    rng = np.random.default_rng(7)
    return GltfAnimation(
        fps=30.0,
        expression=rng.uniform(0.0, 1.0, (N_FRAMES, 52)) * (rng.uniform(size=(N_FRAMES, 52)) < 0.3),
        jaw=np.c_[rng.uniform(0.0, 0.3, N_FRAMES), rng.normal(0, 0.03, (N_FRAMES, 2))],
        neck=rng.normal(0, 0.15, (N_FRAMES, 3)),
        eyes=rng.normal(0, 0.15, (N_FRAMES, 2, 3)),
        global_orient=rng.normal(0, 0.2, (N_FRAMES, 3)),
        transl=rng.normal(0, 0.05, (N_FRAMES, 3)),
    )


@pytest.fixture(scope="module")
def glb(anny_head, tmp_path_factory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("glb") / "head.glb"
    info = export_glb(path, anny_head, animation=_animation(), texture_size=256)
    return path, info


@pytest.fixture(scope="module")
def gltf(glb) -> gl.GLTF2:
    return gl.GLTF2().load_binary(str(glb[0]))


def _model(anny_head, **params) -> np.ndarray:
    t = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in params.items()}
    with torch.no_grad():
        return anny_head(**t).vertices.double().numpy()


# --- tests -----------------------------------------------------------------------------------------
def test_structure(gltf: gl.GLTF2, glb, anny_head) -> None:
    info = glb[1]
    mesh = gltf.meshes[0]
    assert mesh.extras["targetNames"] == anny_head.expression_names and len(mesh.extras["targetNames"]) == 52
    assert [p.material for p in mesh.primitives] == [0, 1, 2]
    assert [m.name for m in gltf.materials] == ["skin", "eyes", "mouth"]
    assert all(len(p.targets) == 52 for p in mesh.primitives)
    assert [gltf.nodes[j].name for j in gltf.skins[0].joints] == anny_head.joint_names
    assert info.sparse_targets > 40  # ARKit shapes are local: most targets are stored sparse
    # every triangle is in exactly one primitive, seams split: more vertices than the model
    assert sum(gltf.accessors[p.indices].count for p in mesh.primitives) == 3 * anny_head.faces.shape[0]
    assert info.num_vertices > anny_head.num_vertices
    uv = read_accessor(gltf, mesh.primitives[0].attributes.TEXCOORD_0)
    vmap = info.vertex_map
    faces = anny_head.faces.numpy()
    # UVs match the model's per-corner UVs (glTF v = 1 - v), for every face corner
    f_gl = np.concatenate([read_accessor(gltf, p.indices)[:, 0] for p in mesh.primitives]).astype(np.int64).reshape(-1, 3)
    assert set(map(tuple, np.sort(vmap[f_gl], 1))) == set(map(tuple, np.sort(faces, 1)))
    model_uv = anny_head.uvs.double().numpy()[anny_head.uv_faces.numpy()]  # [F, 3, 2]
    lookup = {tuple(f): k for k, f in enumerate(faces)}
    for tri in f_gl[:: 97]:
        k = lookup[tuple(vmap[tri])]
        np.testing.assert_allclose(uv[tri], np.c_[model_uv[k, :, 0], 1 - model_uv[k, :, 1]], atol=1e-6)
    w = read_accessor(gltf, mesh.primitives[0].attributes.WEIGHTS_0)
    assert np.abs(w.sum(1) - 1).max() < 1e-6


def test_neutral_and_each_channel(gltf: gl.GLTF2, glb, anny_head) -> None:
    vmap = glb[1].vertex_map
    prim = gltf.meshes[0].primitives[0]
    base = read_accessor(gltf, prim.attributes.POSITION)
    expr = np.concatenate([np.zeros((1, 52)), np.eye(52)])
    model = _model(anny_head, expression=expr)[:, vmap]
    assert np.abs(base - model[0]).max() <= 1e-5
    worst = 0.0
    for k, tgt in enumerate(prim.targets):
        worst = max(worst, float(np.abs(base + read_accessor(gltf, target_position(tgt)) - model[k + 1]).max()))
    print(f"morph round trip: max error over neutral + 52 channels = {worst:.2e} m")
    assert worst <= 1e-5


def test_jaw_skinning(gltf: gl.GLTF2, glb, anny_head) -> None:
    vmap = glb[1].vertex_map
    jaw_node = gltf.skins[0].joints[anny_head.joint_names.index("jaw")]
    aa = np.array([0.35, 0.0, 0.0])
    q = matrix_to_quaternion_xyzw(axis_angle_to_matrix(torch.tensor(aa, dtype=torch.float64)).numpy())
    ours = evaluate_glb(gltf, np.zeros(52), {jaw_node: {"rotation": q}})
    model = _model(anny_head, jaw=aa[None])[0, vmap]
    err = np.linalg.norm(ours - model, axis=1)
    moved = np.linalg.norm(model - _model(anny_head)[0, vmap], axis=1)
    print(f"jaw 0.35 rad: max vertex error {err.max():.2e} m, mean {err.mean():.2e} m "
          f"(max vertex motion {moved.max() * 1e3:.1f} mm)")
    # The influence limit keeps every jaw weight here (see limit_influences), so only float32
    # rounding remains.
    assert err.max() < 1e-5


def test_animation_reproduces_model(gltf: gl.GLTF2, glb, anny_head) -> None:
    anim = _animation()
    vmap = glb[1].vertex_map
    model = _model(anny_head, **anim.params())[:, vmap]
    full = gltf.animations[0]
    times = read_accessor(gltf, full.samplers[0].input)[:, 0]
    np.testing.assert_allclose(times, np.arange(N_FRAMES) / 30.0, atol=1e-6)
    worst = 0.0
    for i in range(N_FRAMES):
        w, over = animation_overrides(gltf, i)
        np.testing.assert_allclose(w, anim.expression[i], atol=1e-6)
        err = np.linalg.norm(evaluate_glb(gltf, w, over) - model[i], axis=1)
        worst = max(worst, float(err.max()))
    print(f"animation ({N_FRAMES} random frames, pose+expression): max vertex error {worst * 1e3:.3f} mm")
    # Neck/eye/global pose: vertices with 5-6 influences lose some (merged into a neighbour joint).
    assert worst < 1.5e-3


def test_limit_influences() -> None:
    w = np.array([[0.1, 0.2, 0.3, 0.05, 0.35, 0.0], [1.0, 0, 0, 0, 0, 0]])
    j, ww, dropped = limit_influences(w)
    assert j[0].tolist() == [4, 2, 1, 0] and j[1].tolist() == [0, 0, 0, 0]
    np.testing.assert_allclose(ww[0], np.array([0.35, 0.3, 0.2, 0.1]) / 0.95, rtol=1e-6)
    assert ww[1].tolist() == [1.0, 0.0, 0.0, 0.0] and dropped == pytest.approx(0.05)


def test_limit_influences_prefers_cheap_merges() -> None:
    # joints 0..2 move together (cost 0.001), joint 3 moves apart (cost 1): with k=2, the small
    # weight on joint 3 must survive and the chain weights merge.
    cost = np.ones((1, 4, 4)) - np.eye(4)
    cost[0, :3, :3] = 0.001 * (1 - np.eye(3))
    j, ww, _ = limit_influences(np.array([[0.4, 0.3, 0.2, 0.1]]), k=2, pair_cost=cost)
    assert sorted(j[0].tolist()) == [0, 3]
    np.testing.assert_allclose(ww[0][np.argsort(j[0])], [0.9, 0.1], rtol=1e-6)


def test_quaternion_matches_rotation() -> None:
    rng = np.random.default_rng(3)
    aa = rng.normal(0, 1.5, (200, 3))
    aa[:4] = [[np.pi, 0, 0], [0, np.pi, 0], [0, 0, np.pi], [0, 0, 0]]  # the branch edge cases
    rot = axis_angle_to_matrix(torch.tensor(aa)).numpy()
    q = matrix_to_quaternion_xyzw(rot)
    back = np.stack([quat_to_matrix(x) for x in q])
    assert np.abs(back - rot).max() < 1e-9


def test_default_size_glb(anny_head, tmp_path: Path) -> None:
    """Default settings (the CLI's 2048 texture, no animation): print the size, stay <= 10 MB."""
    info = export_glb(tmp_path / "d.glb", anny_head, texture_size=2048)
    print(f"default GLB: {info.size_bytes / 1e6:.2f} MB, {info.num_vertices} vertices, {info.sparse_targets}/52 sparse targets")
    assert info.size_bytes <= 10_000_000


def test_photographic_texture_stays_small(anny_head, tmp_path: Path) -> None:
    """Worst case for PNG (a 2048^2 noisy texture, ~12 MB as PNG): "auto" switches to JPEG."""
    noise = np.random.default_rng(0).integers(0, 256, (2048, 2048, 3), dtype=np.uint8)
    info = export_glb(tmp_path / "n.glb", anny_head, texture=noise)
    g = gl.GLTF2().load_binary(str(info.path))
    print(f"GLB with a noise 2048^2 texture: {info.size_bytes / 1e6:.2f} MB ({g.images[0].mimeType})")
    assert g.images[0].mimeType == "image/jpeg" and info.size_bytes <= 10_000_000


# --- external consumers (Node) ---------------------------------------------------------------------
# package.json (and its lock) pins the versions; .ci/run installs them. Tests never install anything.
NODE_DIR = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="module")
def npm_dir() -> Path:
    """The folder whose node_modules holds gltf-validator and three; skips when they are absent."""
    if shutil.which("node") is None:
        pytest.skip("node not found: external glTF checks skipped")
    modules = NODE_DIR / "node_modules"
    if not ((modules / "gltf-validator").is_dir() and (modules / "three").is_dir()):
        pytest.skip("gltf-validator/three not installed: run `npm ci --prefix tests/node` (.ci/run does)")
    return NODE_DIR


_VALIDATE_JS = """
import fs from 'fs';
const { validateBytes } = await import(process.argv[2]);
const report = await validateBytes(new Uint8Array(fs.readFileSync(process.argv[3])));
console.log(JSON.stringify(report.issues));
"""


def test_khronos_validator(glb, npm_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "validate.mjs"
    script.write_text(_VALIDATE_JS)
    entry = npm_dir / "node_modules" / "gltf-validator" / "module.mjs"
    r = subprocess.run(["node", str(script), entry.as_uri(), str(glb[0])], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    issues = json.loads(r.stdout)
    print(f"gltf-validator: {issues['numErrors']} errors, {issues['numWarnings']} warnings, "
          f"{issues['numInfos']} infos, {issues['numHints']} hints")
    for m in issues["messages"]:
        print(f"  [{m['severity']}] {m['code']}: {m['message']} ({m.get('pointer', '')})")
    assert issues["numErrors"] == 0


_THREE_JS = """
import fs from 'fs';
globalThis.self = globalThis;  // the loader reads self.URL (a browser global)
const THREE = await import(process.argv[2]);
const { GLTFLoader } = await import(process.argv[3]);
// Node has no image decoder: resolve textures to a placeholder image (the loader still builds
// the texture and assigns it to the material, which is what we check).
THREE.ImageLoader.prototype.load = function (url, onLoad) {
  const img = { width: 1, height: 1 };
  setTimeout(() => onLoad && onLoad(img), 0);
  return img;
};
const buf = fs.readFileSync(process.argv[4]);
const ab = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
new GLTFLoader().parse(ab, '', (gltf) => {
  const meshes = [];
  gltf.scene.traverse((o) => { if (o.isMesh) meshes.push(o); });
  const skin = meshes.find((m) => m.material.name === 'skin');
  const jawOpen = skin.morphTargetDictionary['jawOpen'];
  meshes.forEach((m) => { m.morphTargetInfluences[jawOpen] = 1.0; });
  const jaw = skin.skeleton.bones.find((b) => b.name === 'jaw');
  jaw.quaternion.setFromAxisAngle(new THREE.Vector3(1, 0, 0), 0.35);
  gltf.scene.updateMatrixWorld(true);
  const n = skin.geometry.attributes.position.count;
  const v = new THREE.Vector3();
  const pos = [];
  for (let i = 0; i < n; i++) { skin.getVertexPosition(i, v); pos.push(v.x, v.y, v.z); }
  console.log(JSON.stringify({
    meshes: meshes.map((m) => ({ skinned: !!m.isSkinnedMesh, material: m.material.name, hasMap: !!m.material.map,
      targets: Object.keys(m.morphTargetDictionary || {}), nMorph: (m.geometry.morphAttributes.position || []).length,
      bones: m.skeleton ? m.skeleton.bones.map((b) => b.name) : [] })),
    animations: gltf.animations.map((a) => ({ name: a.name, tracks: a.tracks.length, duration: a.duration })),
    positions: pos,
  }));
}, (err) => { console.error(String(err)); process.exit(1); });
"""


def test_threejs_loads_it(glb, gltf, npm_dir: Path, tmp_path: Path, anny_head) -> None:
    """three.js's GLTFLoader (Node) finds the 52 ARKit targets and the skin; with jawOpen = 1 and the
    jaw bone turned, its CPU morph+skinning (getVertexPosition) matches the model."""
    script = tmp_path / "three.mjs"
    script.write_text(_THREE_JS)
    three = npm_dir / "node_modules" / "three"
    r = subprocess.run(["node", str(script), (three / "build" / "three.module.js").as_uri(),
                        (three / "examples" / "jsm" / "loaders" / "GLTFLoader.js").as_uri(), str(glb[0])],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert [m["material"] for m in out["meshes"]] == ["skin", "eyes", "mouth"]
    for m in out["meshes"]:
        assert m["skinned"] and m["hasMap"] and m["nMorph"] == 52
        assert m["targets"] == anny_head.expression_names
        # three.js strips characters reserved in its track paths ('.', ':', '/', '[', ']') from names
        assert m["bones"] == [re.sub(r"[\[\]\.:/]", "", n.replace(" ", "_")) for n in anny_head.joint_names]
    assert out["animations"][0]["duration"] == pytest.approx((N_FRAMES - 1) / 30.0, abs=1e-5)
    three_pos = np.asarray(out["positions"]).reshape(-1, 3)
    vmap = glb[1].vertex_map
    expr = np.zeros((1, 52))
    expr[0, anny_head.expression_names.index("jawOpen")] = 1.0
    model = _model(anny_head, expression=expr, jaw=np.array([[0.35, 0.0, 0.0]]))[0, vmap]
    err = np.linalg.norm(three_pos - model, axis=1)
    print(f"three.js jawOpen=1 + jaw 0.35 rad vs model: max {err.max():.2e} m, mean {err.mean():.2e} m")
    assert err.max() < 1e-5
