"""A restricted unpickler for FLAME-style model files (user-supplied ``.pkl``).

FLAME (like SMPL) ships as a Python-2 pickle holding numpy arrays, chumpy ``Ch`` objects and a
scipy sparse matrix. ``pickle.load`` on such a file can run arbitrary code, so it is never used on
user files here. Instead :class:`RestrictedUnpickler` resolves only an explicit allow-list of
globals; any other global is refused with :class:`~avatar.errors.UnsafePickleError` at the moment
the pickle names it, i.e. before it could be called. chumpy and scipy are not imported (nor needed):
their objects are rebuilt as inert stand-ins from their pickled state and converted to plain numpy
arrays before :func:`load_pickle_restricted` returns.

>>> data = load_pickle_restricted("generic_model.pkl")  # doctest: +SKIP
>>> data["v_template"].shape  # doctest: +SKIP
(5023, 3)
"""
from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np

from avatar.errors import AvatarError, MissingAssetError, UnsafePickleError

__all__ = ["RestrictedUnpickler", "load_pickle_restricted"]

# Dense matrices made from a sparse one are capped so a crafted shape cannot exhaust memory.
_MAX_DENSE_ELEMENTS = 1 << 28


def _numpy_multiarray() -> Any:
    # numpy 2 moved numpy.core to numpy._core; files written by either name the one they knew.
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray


def _numpy_frombuffer() -> Any:
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 2
        from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]
    return _frombuffer


# --- inert stand-ins for chumpy and scipy objects --------------------------------------------
class _Stub:
    """An object rebuilt from a pickle without running any of its original class's code."""

    kind: str = ""

    def __init__(self) -> None:  # never called by pickle (it uses __new__); here for clarity
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _ChumpyStub(_Stub):
    """A chumpy object; ``state`` is the ``__dict__`` chumpy pickled (``x`` for a plain ``Ch``)."""


class _SparseStub(_Stub):
    """A scipy sparse matrix; ``state`` holds ``data``, ``indices``, ``indptr`` and ``_shape``."""


def _stub_class(base: type[_Stub], kind: str) -> type[_Stub]:
    return type(f"{base.__name__}_{kind}", (base,), {"kind": kind})


# chumpy's elementwise ops that may appear as a node of a pickled expression: evaluated on arrays.
_CHUMPY_OPS: Mapping[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = MappingProxyType(
    {"add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide}
)


def _stub_table() -> Mapping[tuple[str, str], type[_Stub]]:
    """(module, name) -> stand-in class, for every spelling chumpy/scipy objects are pickled under."""
    table: dict[tuple[str, str], type[_Stub]] = {("chumpy.ch", "Ch"): _stub_class(_ChumpyStub, "Ch")}
    table.update({("chumpy.ch_ops", op): _stub_class(_ChumpyStub, op) for op in _CHUMPY_OPS})
    for fmt in ("csc", "csr"):  # scipy < 1.8 used scipy.sparse.csc; later scipy.sparse._csc
        cls = _stub_class(_SparseStub, fmt)
        for module in (f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}"):
            for name in (f"{fmt}_matrix", f"{fmt}_array"):
                table[(module, name)] = cls
    return MappingProxyType(table)


_STUB_CLASSES = _stub_table()


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` limited to our stand-ins on ``object`` (how Python 2 pickled them)."""
    if not (isinstance(cls, type) and issubclass(cls, _Stub)) or base is not object or state is not None:
        raise UnsafePickleError(f"refused copyreg._reconstructor({cls!r}, {base!r}, ...): only chumpy/scipy objects are allowed")
    return cls.__new__(cls)


def _safe_codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 uses it to pickle ``bytes`` at protocol < 3: latin-1 only."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafePickleError(f"refused _codecs.encode with encoding {encoding!r} (only latin-1 is allowed)")
    return text.encode("latin-1")


def _allowed_global(module: str, name: str) -> Any:
    """The object a pickle may reference as ``module.name``, or raise :class:`UnsafePickleError`."""
    key = (module, name)
    if key in _STUB_CLASSES:
        return _STUB_CLASSES[key]
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
        return getattr(_numpy_multiarray(), name)
    if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
        return _numpy_frombuffer()
    if key == ("numpy", "ndarray"):
        return np.ndarray
    if key == ("numpy", "dtype"):
        return np.dtype
    if module in ("copy_reg", "copyreg") and name == "_reconstructor":
        return _safe_reconstructor
    if module in ("__builtin__", "builtins") and name in ("object", "set", "frozenset"):
        return {"object": object, "set": set, "frozenset": frozenset}[name]
    if key == ("_codecs", "encode"):
        return _safe_codecs_encode
    raise UnsafePickleError(
        f"refused to unpickle global {module}.{name}: a model file may only contain numpy arrays, "
        "chumpy arrays and scipy sparse matrices (is this really a FLAME model file?)"
    )


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals come only from the allow-list (Python-2 files: latin-1)."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 (pickle's hook)
        return _allowed_global(module, name)

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102
        raise UnsafePickleError(f"refused persistent id {pid!r} in a model file")


# --- stand-ins -> numpy ----------------------------------------------------------------------
def _sparse_to_dense(stub: _SparseStub) -> np.ndarray:
    state = stub.state if isinstance(stub.state, dict) else {}
    try:
        data = np.asarray(state["data"])
        indices = np.asarray(state["indices"], dtype=np.int64)
        indptr = np.asarray(state["indptr"], dtype=np.int64)
        rows, cols = (int(s) for s in state.get("_shape", state.get("shape")))
    except (KeyError, TypeError, ValueError) as err:
        raise AvatarError(f"a pickled scipy {stub.kind} matrix lacks data/indices/indptr/_shape ({err!r})") from err
    # csc compresses columns (indices are rows); csr compresses rows (indices are columns).
    n_major, n_minor = (cols, rows) if stub.kind == "csc" else (rows, cols)
    nnz = data.shape[0] if data.ndim == 1 else -1
    ok = (
        rows >= 0 and cols >= 0 and rows * cols <= _MAX_DENSE_ELEMENTS and indptr.shape == (n_major + 1,)
        and indices.shape == (nnz,) and indptr[0] == 0 and indptr[-1] == nnz and bool(np.all(np.diff(indptr) >= 0))
        and (nnz == 0 or (indices.min() >= 0 and indices.max() < n_minor))
    )
    if not ok:
        raise AvatarError(f"a pickled scipy {stub.kind} matrix of shape ({rows}, {cols}) is inconsistent")
    major = np.repeat(np.arange(n_major), np.diff(indptr))
    dense = np.zeros((rows, cols), dtype=data.dtype if data.dtype.kind in "biuf" else np.float64)
    r, c = (indices, major) if stub.kind == "csc" else (major, indices)
    np.add.at(dense, (r, c), data)  # duplicates add up, as scipy's todense does
    return dense


def _chumpy_to_array(stub: _ChumpyStub, convert: Callable[[Any], Any]) -> np.ndarray:
    state = stub.state if isinstance(stub.state, dict) else {}
    if stub.kind == "Ch" or "x" in state:
        if "x" not in state:
            raise AvatarError("a pickled chumpy Ch object has no 'x' array")
        return np.asarray(convert(state["x"]))
    if "a" not in state or "b" not in state:
        raise AvatarError(f"a pickled chumpy {stub.kind} node lacks its operands 'a' and 'b'")
    return _CHUMPY_OPS[stub.kind](np.asarray(convert(state["a"])), np.asarray(convert(state["b"])))


def _to_plain(obj: Any) -> Any:
    """Replace every stand-in in a loaded structure with a numpy array (shared objects stay shared)."""
    done: dict[int, Any] = {}
    busy: set[int] = set()

    def convert(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: convert(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(convert(v) for v in x)
        if not isinstance(x, _Stub):
            return x
        if id(x) in done:
            return done[id(x)]
        if id(x) in busy:  # only a crafted file can make a chumpy expression refer to itself
            raise AvatarError("a pickled chumpy expression refers to itself")
        busy.add(id(x))
        out = _sparse_to_dense(x) if isinstance(x, _SparseStub) else _chumpy_to_array(x, convert)
        done[id(x)] = out
        return out

    return convert(obj)


def load_pickle_restricted(path: str | Path) -> dict:
    """Load a FLAME/SMPL-style model pickle without ever building objects outside the allow-list.

    Args:
        path: the ``.pkl`` file (Python 2 or 3, any protocol).
    Returns:
        The file's top-level dict with numpy arrays in place of chumpy arrays and scipy sparse
        matrices (made dense).
    Raises:
        UnsafePickleError: the file names a global outside the allow-list (nothing was called).
        MissingAssetError: the file is missing, unreadable, not a pickle, or not a dict.
        AvatarError: a chumpy/scipy object in the file is malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingAssetError(f"file not found: {path}")
    try:
        with path.open("rb") as f:
            obj = RestrictedUnpickler(f, encoding="latin1").load()
    except AvatarError:
        raise
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, UnicodeDecodeError, RecursionError) as err:
        raise MissingAssetError(f"{path} is not a readable model pickle ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise MissingAssetError(f"{path} holds a pickled {type(obj).__name__}, not the dict of arrays a model file has")
    return _to_plain(obj)
