"""The base of every intervention: hooks on decoder blocks, the record of each forward call, and
where in a call to act.

Every intervention is a context manager that installs forward hooks on decoder blocks (or on
another hook point of them, ``where=``: see :mod:`actbridge.hooks`), and one pre-hook on the
model that records each call's inputs, and always removes them on exit. They
work in plain forward passes and inside ``model.generate()`` with a KV cache: the prefill call
and every decode step, left- or right-padded batches.

Positions (``positions=``) choose where an intervention acts in each forward call:

- ``"all"``: every real (non-padding) token, prompt and generated;
- ``"last"``: each row's last real token of every call (the last prompt token at prefill,
  also in a right-padded batch, then each new token);
- ``"prompt"`` / ``"generated"``: only the prefill call / only decode steps;
- a callable ``f(input_ids, attention_mask) -> bool mask`` of shape ``(batch, seq)`` for the
  current call, such as :func:`at_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch.utils.hooks import RemovableHandle

from actbridge._typing import Map, Model, Tensor
from actbridge.errors import InterventionError
from actbridge.hooks import Point, check_where, hook_points, layer_indices, passed_cache, register_point_hook

#: Where to act in a call: one of :data:`POSITIONS`, or ``f(input_ids, mask) -> (batch, seq) bool``.
Positions = str | Callable[["Tensor | None", "Tensor | None"], "Tensor"]
#: A map's torch module per ``(device, dtype)`` (see :func:`torch_map`).
MapModules = dict[tuple["torch.device", "torch.dtype"], "torch.nn.Module"]
POSITIONS = ("all", "last", "prompt", "generated")


class _Calls:
    """A pre-hook on the model recording each call's ``input_ids`` and attention mask (for the
    current positions) and whether it is a prefill (no cached tokens) or a decode step."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.input_ids: Tensor | None = None  # (batch, seq) token ids, None with inputs_embeds
        self.mask: Tensor | None = None  # (batch, seq) bool of the current call's positions
        self.full_mask: Tensor | None = None  # (batch, cached + seq), as passed
        self.position_ids: Tensor | None = None
        self.prefill = True  # no cached tokens before this call
        self.cached_call = False  # the call passes a KV cache (generation)
        self.paused = False  # set while the intervention itself runs a model (no recording)
        self.handle: RemovableHandle | None = None

    def __enter__(self) -> _Calls:
        self.handle = self.model.register_forward_pre_hook(self._record, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.remove()

    def _record(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.paused:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        given: Any = ids if ids is not None else kwargs.get("inputs_embeds")
        seq = given.shape[1]
        past = passed_cache(kwargs)
        cached = 0
        if past is not None and hasattr(past, "get_seq_length"):
            cached = int(past.get_seq_length())
        self.prefill = cached == 0
        self.cached_call = past is not None
        self.input_ids = ids
        mask = kwargs.get("attention_mask")
        self.full_mask = mask
        self.mask = None if mask is None or mask.dim() != 2 else mask[:, -seq:].bool()
        self.position_ids = kwargs.get("position_ids")

    def select(self, positions: Positions, h: Tensor) -> Tensor | None:
        """A ``(batch, seq, 1)`` float mask of where to act in this call (None: everywhere)."""
        import torch

        batch, seq = h.shape[0], h.shape[1]
        chosen: Tensor | None
        real = self.mask if self.mask is not None and self.mask.shape == (batch, seq) else None
        if callable(positions):
            chosen = torch.as_tensor(positions(self.input_ids, real), device=h.device).bool()
            if chosen.shape != (batch, seq):
                raise InterventionError(
                    f"positions callable returned shape {tuple(chosen.shape)}, expected {(batch, seq)}"
                )
        elif positions == "all":
            chosen = real
        elif positions == "last":
            chosen = torch.zeros(batch, seq, dtype=torch.bool, device=h.device)
            if real is None:
                chosen[:, -1] = True
            else:  # each row's last real token: right padding puts it before the last column
                r = real.to(h.device)
                last = seq - 1 - r.flip(-1).int().argmax(-1)
                rows = torch.arange(batch, device=h.device)[r.any(-1)]
                chosen[rows, last[rows]] = True
        elif positions == "prompt":
            if not self.prefill:
                return h.new_zeros(batch, seq, 1)
            chosen = real
        elif positions == "generated":
            if self.prefill:
                return h.new_zeros(batch, seq, 1)
            chosen = real
        else:
            raise InterventionError(f"positions must be one of {POSITIONS} or a callable, not {positions!r}")
        if chosen is None:
            return None
        if real is not None:
            chosen = chosen & real.to(chosen.device)
        return chosen.unsqueeze(-1).to(h.dtype)


class Intervention:
    """Base class: a context manager whose hooks call :meth:`edit` on the tensors at hook points
    ``where`` (block outputs by default) of blocks ``layers``.

    Use ``with intervention: ...``, or :meth:`on` / :meth:`off` to toggle it at run time.
    """

    def __init__(
        self, model: Model, layers: int | Sequence[int], where: str | Sequence[str] = "resid_post"
    ) -> None:
        self.model = model
        self.layers = layer_indices(model, layers)
        self.where = check_where(where)
        self.points: list[Point] = hook_points(self.layers, self.where)
        self.calls = _Calls(model)
        self._handles: list[RemovableHandle] = []

    def edit(self, layer: int, h: Tensor) -> Tensor:  # pragma: no cover - overridden
        """The new tensor ``(batch, seq, d)`` for ``h``, the one at a hook point of block
        ``layer`` (for ``"embed"``: the first of the intervention's layers)."""
        raise NotImplementedError

    def edit_point(self, point: Point, h: Tensor) -> Tensor:
        """The new tensor for ``h``, the one at hook point ``point`` (``(layer, where)``, one of
        :attr:`points`): :meth:`edit` of its layer, unless a subclass acts differently at
        different points of one block."""
        return self.edit(point[0], h)

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def on(self) -> Intervention:
        """Install the hooks (idempotent)."""
        if self.active:
            return self
        self.calls.__enter__()
        try:
            for point in self.points:
                self._handles.append(register_point_hook(self.model, point, self._hook(point)))
        except BaseException:
            self.off()
            raise
        return self

    def off(self) -> Intervention:
        """Remove the hooks (idempotent)."""
        for handle in self._handles:
            handle.remove()
        if self._handles or self.calls.handle is not None:
            self.calls.__exit__()
            self.calls.handle = None
        self._handles = []
        return self

    def _hook(self, point: Point) -> Callable[[Tensor], Tensor | None]:
        def hook(h: Tensor) -> Tensor | None:
            if self.calls.paused:  # a forward pass the intervention runs itself (re-entrant)
                return None
            return self.edit_point(point, h)

        return hook

    def __enter__(self) -> Intervention:
        return self.on()

    def __exit__(self, *exc: object) -> None:
        self.off()


def at_tokens(*sequences: Sequence[int]) -> Callable[[Tensor | None, Tensor | None], Tensor]:
    """A ``positions`` callable for :class:`steer`: every position inside an occurrence of any
    of the token-id ``sequences`` in the call's ``input_ids`` (e.g. the trigger's tokens from
    :func:`trigger_tokens`). Decode steps see one token at a time, so only prompts are steered."""
    seqs = [list(map(int, q)) for q in sequences]
    if not seqs or any(len(q) == 0 for q in seqs):
        raise InterventionError("at_tokens needs one or more non-empty token-id sequences")

    def positions(input_ids: Tensor | None, mask: Tensor | None) -> Tensor:
        import torch

        if input_ids is None:
            raise InterventionError("at_tokens needs input_ids (the model was called with inputs_embeds)")
        chosen = torch.zeros(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        for q in seqs:
            k = len(q)
            if input_ids.shape[1] < k:
                continue
            windows = input_ids.unfold(1, k, 1)  # (batch, seq - k + 1, k)
            starts = (windows == torch.as_tensor(q, device=input_ids.device)).all(-1)
            for j in range(k):
                chosen[:, j : j + starts.shape[1]] |= starts
        return chosen

    return positions


def torch_map(m: Map, device: torch.device, dtype: torch.dtype, cache: MapModules) -> torch.nn.Module:
    """``m.to_torch()`` on ``device`` in ``dtype``, in inference mode, built once per
    ``(device, dtype)`` and kept in ``cache``."""
    key = (device, dtype)
    if key not in cache:
        cache[key] = m.to_torch().to(device=device, dtype=dtype).eval().requires_grad_(False)
    return cache[key]
