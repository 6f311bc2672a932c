"""The activation store: a directory of safetensors shards plus ``manifest.json``.

One row per token; each row holds one float vector per *site* (e.g. ``source``: a layer of
model A, ``target``: a layer of model B) and one int64 per *column* (``token_id``, ``doc``,
``pos``, ...). Writing, reading, shuffling, statistics and checksums run in Rust; this module
converts arguments and documents the API.

Layout on disk::

    store/
      manifest.json               schema, shard list (rows, bytes, xxh3), metadata
      shard-000000.safetensors    every site (rows, dim) and column (rows,) for its rows
      shard-000001.safetensors    ...

Each shard is a plain safetensors file, readable by any safetensors reader.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from actbridge import _native
from actbridge._arrays import checked_int, float_rows, int_column, out_of_range, row_indices, row_selection
from actbridge._typing import OutDType, Rows, ShuffleOption, StoredDType, Tensor, WriteMode
from actbridge.errors import StoreArgumentError, StoreError

if TYPE_CHECKING:
    import torch

__all__ = ["ActivationStore", "StoreArgumentError", "StoreWriter"]

PathLike = str | os.PathLike[str]
#: Default shard size; shards are sized to about this many bytes unless ``shard_rows`` is set.
SHARD_BYTES = 256 * 2**20
#: Bounds of the size and count arguments (a value outside raises StoreArgumentError): the
#: Rust core's, which checks them again.
MAX_SHARD_ROWS: int = _native.MAX_SHARD_ROWS
MAX_SHARD_BYTES: int = _native.MAX_SHARD_BYTES
MAX_QUEUE: int = _native.MAX_QUEUE
MAX_PREFETCH: int = _native.MAX_PREFETCH
MAX_BATCH: int = _native.MAX_BATCH_ROWS
MAX_WINDOW_BLOCKS: int = _native.MAX_WINDOW_BLOCKS
MAX_WORLD: int = _native.MAX_WORLD
U64_MAX = 2**64 - 1


def _json(value: Any) -> str:
    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, os.PathLike):
            return os.fspath(o)
        raise StoreArgumentError(f"metadata value {o!r} of type {type(o).__name__} is not JSON-serialisable")

    return json.dumps(value, default=default)


class StoreWriter:
    """Append activation rows to a store; a background thread commits full shards.

    Args:
        path: store directory. ``mode="x"`` needs a new path (or an empty directory);
            ``mode="a"`` resumes an existing store after its last committed row (or creates it).
        sites: ``{name: width}``, e.g. ``{"source": 576, "target": 640}``.
        dtype: storage dtype, ``"bfloat16"`` (default), ``"float16"`` or ``"float32"``; or a
            ``{site: dtype}`` mapping. Inputs are converted in Rust (float32 -> bfloat16 rounds
            to nearest even).
        shard_rows: rows per shard; default sizes shards to about ``shard_bytes`` (256 MiB).
        metadata: JSON-serialisable dict merged into the store's metadata.
        columns: names of the int64 columns; default: fixed by the first ``append``.
        check_finite: reject NaN/inf on every append (off by default: it costs one scan).
        queue: sealed shards allowed to wait for the disk (memory bound: ``queue + 2`` shards).
        part: write part ``part`` of a store written by several processes (e.g. one per GPU
            rank): rows go to ``path/part-<part>``, and ``ActivationStore(path)`` opens all
            parts as one store (part 0's rows first). Each part is a complete store of its own.

    ``append`` copies the rows, so callers may reuse their arrays at once. ``flush()`` returns
    once everything appended is durably committed. Rows appended after the last commit are lost
    if the process dies; committed rows never are. Use as a context manager: leaving the block
    (normally or by an exception) commits what was appended and stops the writer thread.
    """

    def __init__(
        self,
        path: PathLike,
        sites: Mapping[str, int],
        dtype: StoredDType | Mapping[str, StoredDType] = "bfloat16",
        shard_rows: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        mode: WriteMode = "x",
        *,
        columns: Sequence[str] | None = None,
        shard_bytes: int = SHARD_BYTES,
        check_finite: bool = False,
        queue: int = 1,
        part: int | str | None = None,
    ) -> None:
        if not isinstance(sites, Mapping) or not sites:
            raise StoreArgumentError(
                'sites must be a non-empty mapping of name -> width, e.g. {"source": 576}'
            )
        dtypes = dict(dtype) if isinstance(dtype, Mapping) else {name: dtype for name in sites}
        unknown = set(dtypes) - set(sites)
        if unknown:
            raise StoreArgumentError(
                f"dtype given for unknown sites {sorted(unknown)}; sites are {list(sites)}"
            )
        spec = []
        for name, dim in sites.items():
            if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
                raise StoreArgumentError(f"site {name!r} has width {dim!r}; widths are positive integers")
            spec.append((name, int(dim), dtypes.get(name, "bfloat16")))
        if shard_rows is not None:
            shard_rows = checked_int(
                "shard_rows (or None to size shards by bytes)", shard_rows, 1, MAX_SHARD_ROWS
            )
        shard_bytes = checked_int("shard_bytes", shard_bytes, 1, MAX_SHARD_BYTES)
        queue = checked_int("queue", queue, 1, MAX_QUEUE)
        self.path = os.fspath(path)
        if part is not None:
            part = str(part)
            if not part or part in (".", "..") or any(c in part for c in "/\\\0") or part != part.strip():
                raise StoreArgumentError(
                    f"part must be a plain name such as 0 or 'rank3' (no path separators), got {part!r}"
                )
            if os.path.exists(os.path.join(self.path, "manifest.json")):
                raise StoreArgumentError(
                    f"{self.path} is a single store; parts go in a directory of their own"
                )
            self.path = os.path.join(self.path, f"part-{part}")
        self.check_finite = check_finite
        self._writer = _native.StoreWriter(
            path=self.path,
            sites=spec,
            columns=list(columns) if columns is not None else None,
            metadata_json=_json(dict(metadata or {})),
            mode=mode,
            shard_rows=shard_rows,
            shard_bytes=shard_bytes,
            queue=queue,
        )
        self._site_names = [name for name, _, _ in spec]

    def append(self, check_finite: bool | None = None, **arrays: Any) -> None:
        """Append ``n`` rows: every site as an ``(n, dim)`` array (numpy, or torch on any device)
        and every column as ``(n,)`` integers (or one integer for all rows). Nothing is appended
        if any argument is rejected.
        """
        sites, columns = [], []
        for name, value in arrays.items():
            if name in self._site_names:
                arr, kind = float_rows(name, value)
                sites.append((name, arr, kind))
        if not sites:
            raise StoreArgumentError(f"append needs every site {self._site_names}; got {sorted(arrays)}")
        n = sites[0][1].shape[0]
        for name, value in arrays.items():
            if name not in self._site_names:
                columns.append((name, int_column(name, value, n)))
        finite = self.check_finite if check_finite is None else check_finite
        self._writer.append(sites=sites, columns=columns, check_finite=finite)

    def flush(self) -> int:
        """Commit every row appended so far; returns the number of committed rows."""
        return self._writer.flush()

    def close(self) -> int:
        """Flush and stop the writer thread (idempotent); returns the committed row count."""
        return self._writer.close()

    def update_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Merge ``metadata`` into the store's metadata; published by the next commit/flush."""
        self._writer.update_metadata(_json(dict(metadata)))

    @property
    def rows(self) -> int:
        """Rows appended so far (committed or not), including rows from earlier sessions."""
        return self._writer.rows

    @property
    def committed_rows(self) -> int:
        """Rows durably committed."""
        return self._writer.committed_rows

    @property
    def columns(self) -> list[str] | None:
        return self._writer.columns

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(json.loads(self._writer.metadata_json))

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # Commit what was appended even when the block failed; but never let a failure to
        # close hide the exception that ended the block.
        try:
            self.close()
        except StoreError:
            if exc_type is None:
                raise

    def __repr__(self) -> str:
        return f"StoreWriter({self.path!r}, rows={self.rows}, committed={self.committed_rows})"


class ActivationStore:
    """A read-only, memory-mapped view of a store's committed rows.

    ``len(store)`` is the number of rows committed when it was opened; :meth:`refresh` picks
    up rows committed since (a store can be read while it is being written). Structure is
    validated at open (:class:`StoreCorruptError` on damage); :meth:`verify` re-hashes all data.
    Only regular files inside the store directory are opened (a symlinked or special manifest
    or shard is :class:`StoreCorruptError`); the directory itself may be a symlink.

    A shard truncated by another program while it is mapped would end the process with SIGBUS
    at the next read of it (mmap's nature); :meth:`batches` (before each epoch),
    :meth:`refresh` and :meth:`verify` check every shard's size first and raise
    :class:`StoreCorruptError` instead.

    Args:
        path: store directory (a single store, or a directory of ``part-*`` stores), or a list
            of store directories opened as one store, rows in the order given.
        page_budget: growth of this process's resident file pages (bytes) after which the
            store's mapped pages are released (they stay in the OS page cache), so reading a
            store larger than RAM keeps resident memory bounded. Default: a quarter of physical
            memory, at least 1 GiB (``actbridge._native.DEFAULT_PAGE_BUDGET``).
    """

    def __init__(self, path: PathLike | Sequence[PathLike], *, page_budget: int | None = None) -> None:
        budget = (
            None if page_budget is None else checked_int("page_budget (bytes)", page_budget, 1, 2**63 - 1)
        )
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        self._store = _native.ActivationStore([os.fspath(p) for p in paths], budget)
        self._load_schema()

    def _load_schema(self) -> None:
        self._sites = {name: dim for name, dim, _ in self._store.sites}
        self._dtypes = {name: dt for name, _, dt in self._store.sites}
        self._metadata: dict[str, Any] = json.loads(self._store.metadata_json)

    def refresh(self) -> ActivationStore:
        """See rows committed since this store was opened; returns ``self``."""
        self._store = self._store.refreshed()
        self._load_schema()
        return self

    # -- schema -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._store)

    @property
    def path(self) -> str:
        return os.fspath(self._store.path)

    @property
    def sites(self) -> dict[str, int]:
        """``{site: width}`` in store order."""
        return dict(self._sites)

    @property
    def dtypes(self) -> dict[str, str]:
        """``{site: storage dtype}``."""
        return dict(self._dtypes)

    @property
    def dtype(self) -> str | dict[str, str]:
        """The storage dtype, or ``{site: dtype}`` when sites differ."""
        kinds = set(self._dtypes.values())
        return kinds.pop() if len(kinds) == 1 else dict(self._dtypes)

    @property
    def columns(self) -> list[str]:
        """Names of the int64 columns."""
        return list(self._store.columns)

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    @property
    def parts(self) -> list[str]:
        """Directories of the parts this store was opened from (one for a single store)."""
        return [os.fspath(p) for p in self._store.parts]

    @property
    def shards(self) -> list[dict[str, Any]]:
        """Committed shards: file (relative to the store's path), rows, bytes, xxh3."""
        return [{"file": f, "rows": r, "bytes": b, "xxh3": h} for f, r, b, h in self._store.shards]

    @property
    def nbytes(self) -> int:
        return sum(s["bytes"] for s in self.shards)

    def __repr__(self) -> str:
        sites = ", ".join(f"{k}: {v}x{self._dtypes[k]}" for k, v in self._sites.items())
        return f"ActivationStore({self.path!r}, rows={len(self)}, sites={{{sites}}}, columns={self.columns})"

    # -- reading ----------------------------------------------------------------------------

    def read(self, site: str, rows: Rows = None, dtype: OutDType = "float32") -> npt.NDArray[Any]:
        """Rows of ``site`` as a new ``(len(rows), dim)`` array (``(dim,)`` for an int row).

        ``rows``: None (all), a slice, an int, an integer array (negative from the end) or a
        boolean mask. ``dtype``: "float32", "float64" or "float16" (bfloat16: :meth:`read_torch`).
        """
        if dtype == "bfloat16":
            raise StoreArgumentError(
                'numpy has no bfloat16: read dtype="float32", or read_torch(..., torch.bfloat16)'
            )
        self._check_site(site)
        return self._read(site, rows, dtype)

    def _check_site(self, site: str) -> None:
        if site not in self._sites:
            hint = " (it is a column: use store.column)" if site in self.columns else ""
            raise StoreArgumentError(
                f"unknown site {site!r}{hint}; this store's sites are {list(self._sites)}"
            )

    def _read(self, name: str, rows: Rows, dtype: OutDType) -> npt.NDArray[Any]:
        if isinstance(rows, (int, np.integer)) and not isinstance(rows, bool):
            n = len(self)
            if not -n <= int(rows) < n:
                raise out_of_range(int(rows), n)
            one: npt.NDArray[Any] = self._store.read(name, np.array([rows], dtype=np.int64), dtype=dtype)[0]
            return one
        return self._store.read(name, row_selection(rows, len(self)), dtype=dtype)

    def read_torch(
        self,
        site: str,
        rows: Rows = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Like :meth:`read` but returns a torch tensor (``torch.float32`` by default; bfloat16
        and float16 come straight from the store without a float32 detour)."""
        import torch

        dtype = torch.float32 if dtype is None else dtype
        names: dict[torch.dtype, OutDType] = {
            torch.float32: "float32",
            torch.float64: "float64",
            torch.float16: "float16",
            torch.bfloat16: "bfloat16",
        }
        if dtype not in names:  # a torch dtype; names maps it to the store's name
            raise StoreArgumentError(
                f"unsupported dtype {dtype}; use torch.float32, float64, float16 or bfloat16"
            )
        self._check_site(site)
        arr = self._read(site, rows, names[dtype])
        t = torch.from_numpy(arr)
        if dtype == torch.bfloat16:
            t = t.view(torch.bfloat16)
        return t if device is None else t.to(device)

    def column(self, name: str, rows: Rows = None) -> npt.NDArray[np.int64]:
        """Values of an int64 column for ``rows`` (same selections as :meth:`read`)."""
        if name not in self.columns:
            raise StoreArgumentError(f"unknown column {name!r}; this store's columns are {self.columns}")
        return self._read(name, rows, "float32")

    def batches(
        self,
        names: str | Sequence[str],
        batch_size: int = 4096,
        shuffle: ShuffleOption = True,
        seed: int = 0,
        rows: Rows = None,
        drop_last: bool = False,
        dtype: OutDType = "float32",
        *,
        epoch: int = 0,
        block_rows: int = 4096,
        window_blocks: int = 16,
        prefetch: int = 2,
        share: tuple[int, int] | None = None,
    ) -> _native.BatchIter:
        """Iterate one epoch of batches: dicts ``{name: (b, dim) floats or (b,) int64}``.

        ``shuffle``: True (a seeded global permutation: each row exactly once per epoch),
        False (store order) or ``"block"`` (for stores much larger than RAM: blocks of
        ``block_rows`` consecutive rows in random order, rows shuffled within windows of
        ``window_blocks`` blocks, so reads stay local). ``seed`` and ``epoch`` select the
        permutation. Batches are gathered in parallel in Rust, ``prefetch`` ahead on a
        background thread; every array is owned by numpy and yours to keep or modify (the thread
        recycles the memory of batches once nothing references them any more, weakly or
        strongly, so a training loop does not page-fault fresh memory per batch). ``len()`` of
        the iterator is the number of batches left.

        ``share=(rank, world)``: this process's part of every batch, for data-parallel training.
        Each batch of the epoch is cut into ``world`` contiguous slices (sizes differ by at most
        one row) and slice ``rank`` is returned, so the ranks' batches ``i`` together are
        exactly the single-process batch ``i``; the number of batches is the same on every rank.
        """
        if share is not None and (not isinstance(share, tuple) or len(share) != 2):
            raise StoreArgumentError(f"share must be a (rank, world) pair, got {share!r}")
        world = checked_int("share's world", 1 if share is None else share[1], 1, MAX_WORLD)
        rank = checked_int("share's rank", 0 if share is None else share[0], 0, world - 1)
        if isinstance(names, str):
            names = [names]
        mode: dict[object, Literal["none", "global", "block"]] = {
            True: "global",
            False: "none",
            "global": "global",
            "none": "none",
            "block": "block",
        }
        if not isinstance(shuffle, (bool, str)) or shuffle not in mode:
            raise StoreArgumentError(f'shuffle must be True, False or "block", not {shuffle!r}')
        return self._store.batches(
            names=list(names),
            batch_size=checked_int("batch_size", batch_size, 1, MAX_BATCH),
            shuffle=mode[shuffle],
            seed=checked_int("seed", seed, 0, U64_MAX),
            epoch=checked_int("epoch", epoch, 0, U64_MAX),
            rows=row_selection(rows, len(self)),
            drop_last=bool(drop_last),
            dtype=dtype,
            block_rows=checked_int("block_rows", block_rows, 1, MAX_BATCH),
            window_blocks=checked_int("window_blocks", window_blocks, 1, MAX_WINDOW_BLOCKS),
            prefetch=checked_int("prefetch", prefetch, 0, MAX_PREFETCH),
            rank=rank,
            world=world,
        )

    def split(
        self, fraction: float = 0.1, seed: int = 0, *, by: str | None = None, rows: Rows = None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Random ``(train_rows, val_rows)``, each sorted, with ``fraction`` of rows in val.

        ``by="doc"`` splits whole groups of a column (no text in both halves).
        ``rows`` restricts the split to a subset.
        """
        if not 0.0 <= fraction < 1.0:
            raise StoreArgumentError(f"fraction must be in [0, 1), got {fraction}")
        base = row_indices(rows, len(self))
        rng = np.random.default_rng(seed)
        if by is None:
            perm = rng.permutation(base)
            n_val = int(round(fraction * len(base)))
            return np.sort(perm[n_val:]), np.sort(perm[:n_val])
        groups = self.column(by, base)
        unique = np.unique(groups)
        n_val = int(round(fraction * len(unique)))
        val_groups = rng.permutation(unique)[:n_val]
        in_val = np.isin(groups, val_groups)
        return base[~in_val], base[in_val]

    def stats(self, site: str, rows: Rows = None) -> dict[str, Any]:
        """Per-dimension statistics in one parallel pass (float64, population variance).

        Returns ``count``, ``mean``/``var``/``std``/``min``/``max`` (each ``(dim,)``) and the
        row-norm summary ``norm_mean``, ``norm_std``, ``norm_min``, ``norm_max``.
        """
        return dict(self._store.stats(site, row_selection(rows, len(self))))

    def verify(self) -> None:
        """Re-read and re-hash every shard; raises :class:`StoreCorruptError` naming bad shards."""
        self._store.verify()

    def release_pages(self) -> None:
        """Drop this process's mapped pages now (they stay in the OS page cache)."""
        self._store.release_pages()


def native_store(store: ActivationStore) -> _native.ActivationStore:
    """The binding's handle behind ``store``, for the package's modules that call native
    routines over a store (the affine pass, the trainers)."""
    return store._store
