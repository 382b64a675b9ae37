"""The restricted unpickler: chumpy/scipy/numpy content becomes arrays; anything else is refused."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from avatar.errors import AvatarError, MissingAssetError, UnsafePickleError
from avatar.models import load_head_model
from avatar.models.unpickle import load_pickle_restricted


def _fake_class(monkeypatch: pytest.MonkeyPatch, module: str, name: str) -> type:
    """A plain class that pickles as ``module.name`` (e.g. chumpy.ch.Ch) without that package."""
    cls = type(name, (), {})
    cls.__module__ = module
    cls.__qualname__ = name
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            monkeypatch.setitem(sys.modules, sub, types.ModuleType(sub))
    monkeypatch.setattr(sys.modules[module], name, cls, raising=False)
    return cls


def _instance(cls: type, state: dict) -> object:
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


def _dump(tmp_path: Path, obj: object, protocol: int = 2, name: str = "model.pkl") -> Path:
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_chumpy_and_sparse_become_arrays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: int) -> None:
    ch = _fake_class(monkeypatch, "chumpy.ch", "Ch")
    csc = _fake_class(monkeypatch, "scipy.sparse._csc", "csc_matrix")
    csr = _fake_class(monkeypatch, "scipy.sparse.csr", "csr_matrix")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 2))
    # chumpy pickles its __dict__ minus weak dicts: x plus bookkeeping (a set, a dict, flags).
    ch_obj = _instance(ch, {"x": x, "_dirty_vars": {"x"}, "_itr": None, "_depends_on_deps": {}, "_make_dense": False})
    # [[1, 0, 2], [0, 0, 3]] in csc (by column) and csr (by row), with a duplicate entry summed.
    csc_obj = _instance(csc, {"_shape": (2, 3), "data": np.array([1.0, 3.0, -1.0, 3.0]),
                              "indices": np.array([0, 1, 0, 0], np.int32), "indptr": np.array([0, 1, 1, 4], np.int32),
                              "maxprint": 50})
    csr_obj = _instance(csr, {"_shape": (2, 3), "data": np.array([1.0, 2.0, 3.0]),
                              "indices": np.array([0, 2, 2]), "indptr": np.array([0, 2, 3])})
    path = _dump(tmp_path, {"shapedirs": ch_obj, "A": csc_obj, "B": csr_obj, "f": np.arange(6, dtype=np.uint32),
                            "bs_style": "lbs"}, protocol)
    data = load_pickle_restricted(path)
    expected = np.array([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]])
    np.testing.assert_array_equal(data["shapedirs"], x)
    np.testing.assert_array_equal(data["A"], expected)
    np.testing.assert_array_equal(data["B"], expected)
    assert data["f"].dtype == np.uint32 and data["bs_style"] == "lbs"
    assert all(type(v).__module__ in ("numpy", "builtins") for v in data.values())


def test_chumpy_ops_are_evaluated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ch = _fake_class(monkeypatch, "chumpy.ch", "Ch")
    add = _fake_class(monkeypatch, "chumpy.ch_ops", "add")
    a = _instance(ch, {"x": np.array([1.0, 2.0])})
    node = _instance(add, {"a": a, "b": np.array([10.0, 20.0])})
    data = load_pickle_restricted(_dump(tmp_path, {"v": node, "again": a}))
    np.testing.assert_array_equal(data["v"], [11.0, 22.0])
    np.testing.assert_array_equal(data["again"], [1.0, 2.0])


def test_python2_string_payload(tmp_path: Path) -> None:
    """Python-2 pickles carry array bytes as ``str``; read with latin-1 they must round-trip exactly."""
    arr = np.array([[0.5, -1.25], [3.0, 255.0]], dtype="<f8")

    class Py2Array:  # reduces the way numpy did under Python 2, with the raw data as a latin-1 str
        def __reduce__(self):  # noqa: ANN204
            from numpy._core.multiarray import _reconstruct

            state = (1, arr.shape, arr.dtype, False, arr.tobytes().decode("latin1"))
            return _reconstruct, (np.ndarray, (0,), b"b"), state

    data = load_pickle_restricted(_dump(tmp_path, {"v": Py2Array()}))
    np.testing.assert_array_equal(data["v"], arr)


def test_sparse_with_bad_indices_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csc = _fake_class(monkeypatch, "scipy.sparse.csc", "csc_matrix")
    bad = _instance(csc, {"_shape": (2, 2), "data": np.ones(1), "indices": np.array([7]), "indptr": np.array([0, 1, 1])})
    with pytest.raises(AvatarError, match="inconsistent"):
        load_pickle_restricted(_dump(tmp_path, {"J_regressor": bad}))


class _Evil:
    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self):  # noqa: ANN204
        return self.func, self.args


@pytest.mark.parametrize("protocol", [0, 2, 5])
@pytest.mark.parametrize("kind", ["os.system", "subprocess.Popen", "builtins.eval", "builtins.exec", "numpy.load"])
def test_malicious_reduce_is_refused(tmp_path: Path, kind: str, protocol: int) -> None:
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').write('x')"
    shell = f"touch {marker}"
    payload = {
        "os.system": _Evil(os.system, shell),
        "numpy.load": _Evil(np.load, str(tmp_path / "x.npy"), None, True),  # numpy, but not on the list
        "subprocess.Popen": _Evil(subprocess.Popen, ["touch", str(marker)]),
        "builtins.eval": _Evil(eval, code),
        "builtins.exec": _Evil(exec, code),
    }[kind]
    # Hide the payload after a legitimate array, as a doctored model file would.
    path = _dump(tmp_path, {"v_template": np.zeros((3, 3)), "f": payload}, protocol)
    if kind in ("builtins.eval", "os.system"):
        # The payload is real: plain pickle.loads would run it (here, harmlessly, in tmp_path).
        pickle.loads(path.read_bytes())
        assert marker.exists()
        marker.unlink()
    with pytest.raises(UnsafePickleError) as info:
        load_pickle_restricted(path)
    refused = str(info.value)
    assert kind.split(".")[-1] in refused
    assert not marker.exists()


def test_reconstructor_only_builds_stand_ins(tmp_path: Path) -> None:
    # copyreg._reconstructor is allowed, but only for chumpy/scipy stand-ins on `object`.
    class Crafted:
        def __reduce__(self):  # noqa: ANN204
            import copyreg

            return copyreg._reconstructor, (np.ndarray, object, None)

    with pytest.raises(UnsafePickleError, match="_reconstructor"):
        load_pickle_restricted(_dump(tmp_path, {"x": Crafted()}))


def test_codecs_encode_only_latin1(tmp_path: Path) -> None:
    class Zlib:
        def __reduce__(self):  # noqa: ANN204
            import _codecs

            return _codecs.encode, ("abc", "zlib_codec")

    with pytest.raises(UnsafePickleError, match="latin-1"):
        load_pickle_restricted(_dump(tmp_path, {"x": Zlib()}))


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(MissingAssetError, match="not found"):
        load_pickle_restricted(tmp_path / "nope.pkl")
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is not a pickle")
    with pytest.raises(MissingAssetError, match="not a readable model pickle"):
        load_pickle_restricted(garbage)
    with pytest.raises(MissingAssetError, match="not the dict"):
        load_pickle_restricted(_dump(tmp_path, [np.zeros(3)]))


def test_flame_missing_file_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(MissingAssetError) as info:
        load_head_model("flame", path=str(tmp_path / "generic_model.pkl"))
    msg = str(info.value)
    assert "FLAME 2023 Open" in msg and "flame.is.tue.mpg.de" in msg and "CC-BY-4.0" in msg
    with pytest.raises(MissingAssetError, match="FLAME 2023 Open"):
        load_head_model("flame")
    not_flame = _dump(tmp_path, {"v_template": np.zeros((3, 3))}, name="other.pkl")
    with pytest.raises(MissingAssetError, match=r"not a FLAME model file \(no f, shapedirs"):
        load_head_model("flame", path=str(not_flame))


def test_unknown_model_name() -> None:
    with pytest.raises(AvatarError, match=r"unknown head model 'nope'.*anny, flame"):
        load_head_model("nope")
