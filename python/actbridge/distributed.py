"""Running under torch.distributed: which process group a fit joins, each rank's share of the
rows, float64 reductions and a check that every rank was given the same settings.

actbridge does not start processes or invent a transport. Launch with ``torchrun`` (or any
launcher that sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``), initialise the
default group (``torch.distributed.init_process_group``, or :func:`init_from_env`, which the CLI
calls), and the fits pick the group up:

- ``AffineMap.fit(store, ...)``: each rank accumulates the statistics of its share of the rows
  (``distributed="split"``, the default inside a group) or of the rows it was given
  (``"own"``, e.g. each rank's own store part); the statistics are re-centred on the global
  mean and all-reduced in float64 once; every rank solves the same map.
- ``AutoencoderMap.fit(..., backend="torch")``: DistributedDataParallel; every rank takes its
  slice of each global batch of the same seeded epoch plan, validation scores are reduced, and
  the schedule decides the same on every rank.

``distributed="off"`` opts out (independent fits in one group). A rank that dies, raises or
misses the group's timeout (``init_process_group(timeout=...)``) makes the others raise
:class:`DistributedError` instead of hanging; settings that differ between ranks raise
:class:`DistributedMismatchError` before anything is reduced.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from actbridge.errors import DistributedError, DistributedMismatchError, MapArgumentError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistributedMode",
    "Group",
    "active_group",
    "init_from_env",
    "is_main",
    "shutdown",
]

#: How a fit uses an initialised process group: "split" (each rank takes a contiguous share of
#: the same row selection of the same store), "own" (each rank fits the rows it was given, e.g.
#: its own store part, and the statistics are summed), "off" (no reduction: each rank fits on
#: its own). None: "split" inside a group of two or more ranks, else a single-process fit.
DistributedMode = Literal["split", "own", "off"]
#: The timeout :func:`init_from_env` gives the group (seconds): a rank that stops answering
#: makes the others fail after this long.
DEFAULT_TIMEOUT_S = 600.0

T = TypeVar("T")


@dataclass(frozen=True)
class Group:
    """This process's place in an initialised torch.distributed process group."""

    rank: int
    world: int
    backend: str

    def share(self, n: int) -> tuple[int, int]:
        """This rank's contiguous ``[start, stop)`` of ``n`` items (sizes differ by at most one)."""
        return n * self.rank // self.world, n * (self.rank + 1) // self.world

    def device(self) -> torch.device:
        """Where this rank's tensors go for collectives: its CUDA device under NCCL, else CPU."""
        import torch

        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def active_group(mode: DistributedMode | None = None, *, what: str = "this fit") -> Group | None:
    """The default process group a fit joins, or None for a single-process fit.

    ``mode`` None: the group when one is initialised with two or more ranks. "off": None.
    "split" / "own": the group, which must then exist (:class:`MapArgumentError` otherwise).
    """
    if mode not in (None, "split", "own", "off"):
        raise MapArgumentError(f'distributed must be "split", "own", "off" or None, not {mode!r}')
    if mode == "off":
        return None
    dist = _torch_distributed()
    if dist is None or not dist.is_initialized():
        if mode is None:
            return None
        raise MapArgumentError(
            f"distributed={mode!r} needs an initialised torch.distributed process group for {what}: "
            "launch with torchrun and call torch.distributed.init_process_group() (or "
            "actbridge.distributed.init_from_env()), or leave distributed=None"
        )
    world = dist.get_world_size()
    if world < 2 and mode is None:
        return None
    return Group(dist.get_rank(), world, str(dist.get_backend()))


def init_from_env(timeout_s: float = DEFAULT_TIMEOUT_S) -> Group | None:
    """Initialise the default group from torchrun's environment (``WORLD_SIZE`` > 1, ``RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``): NCCL when CUDA is available (each rank on device
    ``LOCAL_RANK``), gloo otherwise. None without such an environment; the existing group when
    one is initialised already."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return active_group(None)
    dist = _torch_distributed(load=True)
    if dist is None:
        raise DistributedError("WORLD_SIZE > 1 but torch.distributed is not available in this torch build")
    if not dist.is_initialized():
        import torch

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as e:
            raise DistributedError(
                f"could not join the process group of {os.environ.get('WORLD_SIZE')} ranks "
                f"(RANK={os.environ.get('RANK')}, MASTER_ADDR={os.environ.get('MASTER_ADDR')}, "
                f"MASTER_PORT={os.environ.get('MASTER_PORT')}): {e}"
            ) from e
    return active_group(None)


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised default group, else from ``RANK`` and
    ``WORLD_SIZE`` (torchrun's environment; collection needs no collective to share texts)."""
    dist = _torch_distributed()
    if dist is not None and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def shutdown() -> None:
    """Destroy the default process group if one is initialised. A program that joined a group
    calls this before it exits: gloo's threads still running at interpreter exit make the C++
    runtime abort the process ("terminate called without an active exception")."""
    dist = _torch_distributed()
    if dist is not None and dist.is_initialized():
        # Every rank is done before any tears its connections down: a rank destroying its group
        # while a peer's gloo threads still talk to it made that peer abort (SIGABRT). A peer
        # that is gone fails the barrier within a minute instead of hanging it.
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
            else:
                dist.barrier()
        except RuntimeError:
            pass
        dist.destroy_process_group()


def is_main(group: Group | None = None) -> bool:
    """Whether this process writes results: rank 0 of ``group`` (default: the active group), or
    the only process."""
    group = group if group is not None else active_group(None)
    return group is None or group.rank == 0


def check_same(group: Group, what: str, settings: Mapping[str, Any]) -> None:
    """Raise :class:`DistributedMismatchError` on every rank unless all ranks passed the same
    ``settings`` (JSON-able values; arrays are compared by digest) for ``what``."""
    mine = {k: digest(v) for k, v in settings.items()}
    gathered = all_gather_json(group, what, mine)
    diffs = []
    for rank, theirs in enumerate(gathered):
        for key in sorted(set(theirs) | set(gathered[0])):
            if theirs.get(key) != gathered[0].get(key):
                diffs.append(
                    f"{key}: rank 0 has {gathered[0].get(key)!r}, rank {rank} has {theirs.get(key)!r}"
                )
    if diffs:
        raise DistributedMismatchError(
            f"the {group.world} ranks were given different settings for {what}: " + "; ".join(diffs[:8])
        )


def all_gather_json(group: Group, what: str, value: Any) -> list[Any]:
    """``value`` (JSON-able) from every rank, in rank order. Sent as UTF-8 JSON in byte tensors
    (torch's ``all_gather_object`` would unpickle what other processes send)."""
    import torch

    dev = group.device()
    data = torch.tensor(list(json.dumps(value, sort_keys=True).encode()), dtype=torch.uint8, device=dev)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(size) for _ in range(group.world)]
    _collective(what, lambda dist: dist.all_gather(sizes, size))
    longest = max(int(s) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=dev)
    padded[: data.numel()] = data
    parts = [torch.zeros_like(padded) for _ in range(group.world)]
    _collective(what, lambda dist: dist.all_gather(parts, padded))
    return [json.loads(bytes(p[: int(s)].cpu().tolist()).decode()) for p, s in zip(parts, sizes, strict=True)]


def share_of_selection(
    group: Group, sel: tuple[int, int] | npt.NDArray[np.int64] | None, n: int
) -> slice | npt.NDArray[np.int64]:
    """This rank's contiguous share of a normalised row selection (``row_selection``'s
    ``None``: all ``n`` rows, ``(start, stop)``, or an index array): a slice for a range of
    rows, else the index array's share, either one a ``rows=`` argument."""
    if sel is None:
        sel = (0, n)
    if isinstance(sel, tuple):
        a, b = group.share(sel[1] - sel[0])
        return slice(sel[0] + a, sel[0] + b)
    a, b = group.share(len(sel))
    return sel[a:b]


def selection_digest(sel: tuple[int, int] | npt.NDArray[np.int64] | None) -> Any:
    """A comparable stand-in for a normalised row selection."""
    if sel is None or isinstance(sel, tuple):
        return "all" if sel is None else list(sel)
    return digest(np.asarray(sel, dtype=np.int64))


def all_reduce_sum(group: Group, what: str, values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The element-wise float64 sum of ``values`` over every rank (the same result on each)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(group.device())
    _collective(what, lambda dist: dist.all_reduce(t))
    out: npt.NDArray[np.float64] = t.cpu().numpy()
    return out


def barrier(group: Group, what: str) -> None:
    """Wait for every rank (with the group's timeout)."""
    _collective(what, lambda dist: dist.barrier())


def collective(what: str, call: Callable[[], T]) -> T:
    """Run ``call`` (which performs collectives, e.g. a DDP backward pass), turning a failed
    or timed-out collective into :class:`DistributedError`."""
    return _collective(what, lambda _: call())


def _collective(what: str, call: Callable[[Any], T]) -> T:
    dist = _torch_distributed(load=True)
    assert dist is not None  # a Group exists only when torch.distributed does
    try:
        return call(dist)
    except DistributedError:
        raise
    except RuntimeError as e:  # gloo / NCCL errors, timeouts (DistBackendError is one)
        raise DistributedError(
            f"{what}: a collective across {dist.get_world_size()} ranks failed. Another rank died, "
            "raised or did not reach this point within the group's timeout (set with "
            f"init_process_group(timeout=...)); this rank is {dist.get_rank()}. Cause: {e}"
        ) from e


def _torch_distributed(load: bool = False) -> Any:
    """``torch.distributed``, or None. Without ``load`` it is only looked up when something
    imported it already: a process group exists only after ``init_process_group``, so a
    single-process fit never pays for importing torch (about 1.5 s)."""
    if not load and "torch.distributed" not in sys.modules:
        return None
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    return dist if dist.is_available() else None


def digest(value: Any) -> Any:
    """A comparable stand-in: arrays by shape, dtype and sha256; everything else as JSON."""
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        return f"array{a.shape} {a.dtype} sha256:{hashlib.sha256(a.tobytes()).hexdigest()[:16]}"
    return json.loads(json.dumps(value, default=str))
