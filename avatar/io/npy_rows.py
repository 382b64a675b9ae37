"""Read-only access to the rows of a large ``.npy`` file without mapping it.

A memory map of a clip's frames is cheap to open, but every page it reads stays in the process's
resident set until the system needs it back: a training run over a 5-minute clip reads every frame
and looks, to anyone watching its memory, as if it held them all. :class:`NpyRows` reads the rows it
is asked for into fresh arrays instead, so what the process holds is what it uses; the operating
system's page cache still keeps recently read rows fast.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np


class NpyRows:
    """A ``[N, ...]`` array in a ``.npy`` file, read on indexing (rows first; C order only);
    :meth:`create` makes one to fill row by row.

    ``rows[i]``, ``rows[a:b]``, ``rows[[i, j]]``, a boolean mask and tuples such as ``rows[:, y0:y1]``
    return new writable arrays, as indexing an in-memory array would; ``np.asarray(rows)`` reads all.
    Consecutive rows are read with one call. Safe to share between threads.
    """

    def __init__(self, path: str | Path, writable: bool = False):
        self.path = Path(path)
        self._file = open(self.path, "r+b" if writable else "rb", buffering=0)  # noqa: SIM115  (closed by close())
        try:
            version = np.lib.format.read_magic(self._file)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(self._file)
        except Exception:
            self._file.close()
            raise
        if fortran or dtype.hasobject or len(shape) < 1:
            self._file.close()
            raise ValueError(f"{self.path}: NpyRows reads C-ordered numeric arrays of at least one dimension")
        self.shape, self.dtype = tuple(shape), dtype
        self._offset = self._file.tell()
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * dtype.itemsize
        self._lock = threading.Lock()

    @classmethod
    def create(cls, path: str | Path, shape: tuple[int, ...], dtype) -> NpyRows:
        """A new ``.npy`` file of ``shape`` (zeros, stored sparsely until written), open for writing
        row by row: ``rows[i] = array``. Writes go to the file, not to memory the process keeps."""
        dtype = np.dtype(dtype)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.truncate(f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        return cls(path, writable=True)

    def __setitem__(self, key, value) -> None:
        if not isinstance(key, (int, np.integer)):
            raise IndexError("rows are written one at a time: rows[i] = array")
        i = int(key) + (len(self) if key < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"row {key} out of range for {len(self)} rows")
        row = np.ascontiguousarray(value, dtype=self.dtype)
        if row.shape != self.shape[1:]:
            raise ValueError(f"a row of {self.path.name} is {self.shape[1:]}, got {row.shape}")
        data = memoryview(row).cast("B")
        with self._lock:
            self._file.seek(self._offset + i * self._row_bytes)
            done = 0
            while done < len(data):
                done += self._file.write(data[done:])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, tuple):
            if not key:
                return self[:]
            head, rest = key[0], key[1:]
            rows = self[head]
            return rows[rest] if np.ndim(head) == 0 and not isinstance(head, slice) else rows[(slice(None), *rest)]
        if isinstance(key, slice):
            return self._read(np.arange(len(self))[key])
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean index of shape {idx.shape} for {len(self)} rows")
            return self._read(np.nonzero(idx)[0])
        if not np.issubdtype(idx.dtype, np.integer):
            raise IndexError(f"rows are indexed by integers, slices or a boolean mask, not {idx.dtype}")
        flat = self._read(idx.reshape(-1))
        return flat.reshape(idx.shape + self.shape[1:])

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a if dtype is None else a.astype(dtype)

    def _read(self, idx: np.ndarray) -> np.ndarray:
        n = len(self)
        idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        out = np.empty((idx.size, *self.shape[1:]), self.dtype)
        view = memoryview(out).cast("B")
        start = 0
        with self._lock:
            while start < idx.size:  # one read per run of consecutive rows
                stop = start + 1
                while stop < idx.size and idx[stop] == idx[stop - 1] + 1:
                    stop += 1
                self._file.seek(self._offset + int(idx[start]) * self._row_bytes)
                self._fill(view[start * self._row_bytes: stop * self._row_bytes])
                start = stop
        return out

    def _fill(self, buf: memoryview) -> None:
        done = 0
        while done < len(buf):  # a single read may return less (large requests, signals)
            got = self._file.readinto(buf[done:])
            if not got:
                raise OSError(f"{self.path}: the file ends {len(buf) - done} bytes early (truncated?)")
            done += got

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> NpyRows:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()
