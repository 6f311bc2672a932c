"""Per-row interventions: every row of a batch gets its own steering vector, strength, positions,
layer and hook point (and/or a direction to ablate), so a whole sweep (vectors × α × layers × prompts)
runs as a few large batched ``generate()`` calls instead of one call per cell.

- :class:`Condition`: what to do to one row (``Condition()`` leaves it unsteered);
- :class:`steer_rows`: the intervention context for one batch, ``conditions[i]`` for row ``i``,
  in plain forward passes and inside ``generate()`` (KV cache, left padding) like
  :class:`actbridge.steer` and :class:`actbridge.ablate`;
- :func:`generate_conditions`: greedy completions of every prompt under every condition, in
  batches sized to a memory budget, returned per condition in order.

Rows whose condition has no vector (or ``alpha == 0``) and no ablation are not touched: they are
exactly what the model computes without hooks for that batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from actbridge._typing import Model, Tensor, Tokenizer
from actbridge.errors import HookError, InterventionError
from actbridge.evaluation.generation import (
    GENERATION_MEMORY,
    MAX_BATCH_ROWS,
    encode_prompts,
    generate_batch,
    rows_per_batch,
)
from actbridge.hooks import (
    Point,
    check_one_where,
    layer_indices,
    model_width,
    point_order,
)
from actbridge.interventions.base import POSITIONS, Intervention, Positions
from actbridge.interventions.steering import vector_where
from actbridge.interventions.vectors import VectorLike, as_vector


@dataclass(frozen=True)
class Condition:
    """One row's intervention: add ``alpha · vector`` at hook point ``where`` of block ``layer``
    (defaults: the vector's own layer and the point it was read at, :attr:`SteeringVector.where`;
    ``"resid_post"`` for a raw tensor) at ``positions`` (as for :class:`actbridge.steer`),
    and/or project ``ablate`` out at ``ablate_where`` (one point name or several; default: the
    direction's own point) of each block in ``ablate_layers`` (default: the direction's layer),
    as :class:`actbridge.ablate` does. ``label`` is free text for reports. ``where`` and
    ``ablate_where`` are keyword-only."""

    vector: VectorLike | None = None
    alpha: float = 1.0
    positions: Positions = "all"
    layer: int | None = None
    ablate: VectorLike | None = None
    ablate_layers: int | Sequence[int] | None = None
    label: str = ""
    where: str | None = field(default=None, kw_only=True)
    ablate_where: str | Sequence[str] | None = field(default=None, kw_only=True)

    @property
    def steers(self) -> bool:
        """Whether this condition adds anything (a vector with ``alpha != 0``)."""
        return self.vector is not None and float(self.alpha) != 0.0


UNSTEERED = Condition(label="unsteered")


@dataclass
class _Plan:
    """What one hook point does to the batch: steered rows (grouped by positions) with their
    ``alpha · v`` rows, and ablated rows with their unit directions."""

    steer_rows: list[int]
    deltas: npt.NDArray[np.float32]  # (len(steer_rows), d)
    groups: list[tuple[Positions, list[int]]]  # positions -> indices into steer_rows
    ablate_rows: list[int]
    units: npt.NDArray[np.float32]  # (len(ablate_rows), d)


class steer_rows(Intervention):  # noqa: N801 - used like a function in `with`
    """Row ``i`` of every batch passed to ``model`` gets ``conditions[i]`` (``None`` or
    :data:`UNSTEERED`: nothing). The batch must have exactly ``len(conditions)`` rows (a
    :class:`InterventionError` says so otherwise, e.g. under beam search, which multiplies rows).

    Equivalent, row by row, to running each condition alone with :class:`actbridge.steer` /
    :class:`actbridge.ablate` on the same batch shape: the steered rows' additions are the same
    floats; ablation sums its dot products in another order (differences ~1e-7 relative).
    """

    def __init__(self, model: Model, conditions: Sequence[Condition | None]) -> None:
        if len(conditions) == 0:
            raise InterventionError("steer_rows needs one condition per batch row; got none")
        conds = [c if c is not None else UNSTEERED for c in conditions]
        for i, c in enumerate(conds):
            if not isinstance(c, Condition):
                raise InterventionError(
                    f"conditions[{i}] is a {type(c).__name__}, not an actbridge Condition"
                )
        d = model_width(model)
        per_point: dict[Point, dict[str, list[Any]]] = {}

        def at(point: Point) -> dict[str, list[Any]]:
            return per_point.setdefault(point, {"steer": [], "ablate": []})

        for i, c in enumerate(conds):
            if c.steers and c.vector is not None:
                vec, vec_layer = as_vector(c.vector)
                (where,) = _points(c.where, c.vector, i, one=True)
                layer = c.layer if c.layer is not None else vec_layer
                if layer is None and where != "embed":
                    raise InterventionError(
                        f"conditions[{i}]: pass layer=... (a raw tensor carries no layer)"
                    )
                _check(vec, d, i)
                if not (isinstance(c.positions, str) and c.positions in POSITIONS) and not callable(
                    c.positions
                ):
                    raise InterventionError(
                        f"conditions[{i}]: positions must be one of {POSITIONS} or a callable, "
                        f"not {c.positions!r}"
                    )
                (layer,) = layer_indices(model, [layer if layer is not None else 0])
                at(_point(layer, where))["steer"].append((i, vec * np.float32(c.alpha), c.positions))
            if c.ablate is not None:
                vec, vec_layer = as_vector(c.ablate)
                wheres = _points(c.ablate_where, c.ablate, i, one=False)
                chosen = c.ablate_layers if c.ablate_layers is not None else vec_layer
                if chosen is None:
                    raise InterventionError(
                        f"conditions[{i}]: pass ablate_layers=... (a raw tensor carries no layer)"
                    )
                _check(vec, d, i)
                norm = float(np.linalg.norm(vec))
                if norm == 0:
                    raise InterventionError(f"conditions[{i}]: cannot ablate a zero direction")
                # each point once (the embeddings are one point whatever the layers)
                targets = {_point(layer, w) for layer in layer_indices(model, chosen) for w in wheres}
                for point in sorted(targets, key=point_order):
                    at(point)["ablate"].append((i, vec / norm))
        # nothing to do: a hook that passes every row through
        points = sorted(per_point, key=point_order) or [(0, "resid_post")]
        super().__init__(model, sorted({layer for layer, _ in points}), sorted({w for _, w in points}))
        self.points = points  # exactly the points a condition acts at (not every layer × point)
        self.conditions = conds
        self._plans: dict[Point, _Plan] = {}
        for point, todo in per_point.items():
            steer_idx = [i for i, _, _ in todo["steer"]]
            groups: dict[Any, tuple[Positions, list[int]]] = {}
            for k, (_, _, pos) in enumerate(todo["steer"]):
                key = pos if isinstance(pos, str) else id(pos)
                groups.setdefault(key, (pos, []))[1].append(k)
            self._plans[point] = _Plan(
                steer_idx,
                np.stack([v for _, v, _ in todo["steer"]]) if steer_idx else np.zeros((0, d), np.float32),
                list(groups.values()),
                [i for i, _ in todo["ablate"]],
                np.stack([u for _, u in todo["ablate"]]) if todo["ablate"] else np.zeros((0, d), np.float32),
            )
        self._cast: dict[tuple[Point, Any, Any], tuple[Any, ...]] = {}

    def _tensors(self, point: Point, h: Tensor) -> tuple[Any, ...]:
        """(steer row index, (rows, 1, d) deltas in h's dtype, ablate row index, (rows, d) f32
        units) on h's device, cached."""
        import torch

        key = (point, h.device, h.dtype)
        if key not in self._cast:
            plan = self._plans[point]
            self._cast[key] = (
                torch.as_tensor(plan.steer_rows, dtype=torch.long, device=h.device),
                torch.as_tensor(plan.deltas, device=h.device, dtype=h.dtype).unsqueeze(1),
                torch.as_tensor(plan.ablate_rows, dtype=torch.long, device=h.device),
                torch.as_tensor(plan.units, device=h.device, dtype=torch.float32),
            )
        return self._cast[key]

    def edit_point(self, point: Point, h: Tensor) -> Tensor:
        import torch

        if h.shape[0] != len(self.conditions):
            raise InterventionError(
                f"this batch has {h.shape[0]} rows but steer_rows was given {len(self.conditions)} "
                "conditions (one per row); beam search and num_return_sequences multiply rows"
            )
        plan = self._plans.get(point)
        if plan is None:
            return h
        steer_idx, deltas, ablate_idx, units = self._tensors(point, h)
        out = h
        if plan.steer_rows:
            # (rows, seq, 1) weights: where each steered row acts in this call.
            where = h.new_zeros(len(plan.steer_rows), h.shape[1], 1)
            for positions, members in plan.groups:
                chosen = self.calls.select(positions, h)
                idx = torch.as_tensor(members, dtype=torch.long, device=h.device)
                rows = steer_idx[idx]
                where[idx] = 1.0 if chosen is None else chosen[rows]
            out = out.index_copy(0, steer_idx, out[steer_idx] + where * deltas)
        if plan.ablate_rows:
            hf = out[ablate_idx].float()
            proj = torch.einsum("bsd,bd->bs", hf, units).unsqueeze(-1)
            out = out.index_copy(0, ablate_idx, (hf - proj * units.unsqueeze(1)).to(h.dtype))
        return out


def _points(where: str | Sequence[str] | None, vector: VectorLike, i: int, *, one: bool) -> list[str]:
    """Condition ``i``'s hook points: ``where`` checked (a single name when ``one``), or the point
    the vector was read at (:func:`actbridge.interventions.steering.vector_where`)."""
    try:
        if one and where is not None:
            check_one_where(where)  # type: ignore[arg-type]
        return vector_where(vector, where)
    except HookError as e:
        raise InterventionError(f"conditions[{i}]: {e}") from None


def _point(layer: int, where: str) -> Point:
    """The hook point ``where`` of block ``layer``; the embeddings are one point whatever the
    layer (hooked once, see :func:`actbridge.hooks.hook_points`)."""
    return (0, "embed") if where == "embed" else (layer, where)


def _check(vec: npt.NDArray[np.float32], d: int, i: int) -> None:
    if vec.shape[0] != d:
        raise InterventionError(
            f"conditions[{i}]: the vector has {vec.shape[0]} dimensions, the model's d_model is {d}"
        )
    if not np.isfinite(vec).all():
        raise InterventionError(f"conditions[{i}]: the vector holds NaN or infinite values")


def generate_conditions(
    model: Model,
    tokenizer: Tokenizer,
    conditions: Sequence[Condition | None],
    prompts: Sequence[Any],
    max_new_tokens: int = 32,
    *,
    batch_rows: int | None = None,
    memory_budget: float = GENERATION_MEMORY,
    progress: bool = False,
) -> list[list[str]]:
    """Greedy completions of every prompt under every condition: ``out[c][p]`` is prompt ``p``
    under ``conditions[c]``, as :func:`actbridge.evaluation.generation.generate` would give with
    ``with steer(...)`` for that condition alone (up to the float noise of other batch shapes:
    ties in the logits can flip a token).

    All (condition, prompt) rows are run in batches of ``batch_rows`` rows (default: as many as
    ``memory_budget`` bytes hold, see :func:`rows_per_batch`, at most
    :data:`~actbridge.evaluation.generation.MAX_BATCH_ROWS`), rows of similar
    prompt length together, left-padded, one :class:`steer_rows` context per batch.
    """
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    conds = [c if c is not None else UNSTEERED for c in conditions]
    if not conds or not prompts:
        return [[] for _ in conds]
    if batch_rows is not None and batch_rows < 1:
        raise InterventionError(f"batch_rows must be >= 1, got {batch_rows}")
    if not memory_budget > 0:
        raise InterventionError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    ids = encode_prompts(tokenizer, prompts)
    longest = max(len(x) for x in ids) + max_new_tokens
    size = batch_rows or min(MAX_BATCH_ROWS, rows_per_batch(model, longest, memory_budget))
    # Rows sorted by prompt length (stable: condition-major within a length), so a batch pads little.
    rows = sorted(
        ((c, p) for c in range(len(conds)) for p in range(len(ids))), key=lambda cp: len(ids[cp[1]])
    )
    out: list[list[str]] = [[""] * len(ids) for _ in conds]
    # Counted in generated tokens (one per row per decode step), so a sweep of one large batch
    # still moves and shows an ETA.
    bar = tqdm(
        total=len(rows) * max_new_tokens,
        desc="sweep generations",
        unit="tok",
        unit_scale=True,
        disable=not progress,
        mininterval=1.0,
    )

    def counter(rows_in_batch: int, until: int) -> Any:
        def tick(*_: Any) -> None:  # one forward call = one new token per row
            if bar.n < until:
                bar.update(min(rows_in_batch, until - bar.n))

        return tick

    for k in range(0, len(rows), size):
        chunk = rows[k : k + size]
        done = bar.n
        tick = model.register_forward_hook(counter(len(chunk), done + len(chunk) * max_new_tokens))
        try:
            with steer_rows(model, [conds[c] for c, _ in chunk]):
                texts = generate_batch(model, tokenizer, [ids[p] for _, p in chunk], max_new_tokens)
        finally:
            tick.remove()
        bar.update(done + len(chunk) * max_new_tokens - bar.n)  # rows that stopped early
        for (c, p), text in zip(chunk, texts, strict=True):
            out[c][p] = text
    bar.close()
    return out


def grid(
    vectors: dict[str, VectorLike],
    alphas: Sequence[float],
    *,
    positions: Positions = "all",
    layers: Sequence[int | None] = (None,),
) -> list[Condition]:
    """The conditions of a vectors × α × layers sweep (vector-major, then α, then layer), each
    labelled ``"name α=... [layer=...]"``."""
    out = []
    for name, vec in vectors.items():
        for alpha in alphas:
            for layer in layers:
                tag = f"{name} α={alpha:g}" + (f" layer={layer}" if layer is not None else "")
                out.append(Condition(vec, float(alpha), positions, layer, label=tag))
    return out


__all__ = ["UNSTEERED", "Condition", "generate_conditions", "grid", "rows_per_batch", "steer_rows"]
