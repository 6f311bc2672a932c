"""Steering and directional ablation: ``h + α·v`` at chosen positions after one block, and
``h − (h·v̂)v̂`` after each of some blocks (or at other hook points of them: ``where=``, see
:mod:`actbridge.hooks`); :func:`directional_ablation` removes a direction from every write to
the residual stream (Arditi et al. 2024)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from actbridge._typing import Model, Tensor
from actbridge.errors import InterventionError
from actbridge.hooks import RESIDUAL_WRITES, check_where, decoder_blocks, layer_indices, model_width
from actbridge.interventions.base import POSITIONS, Intervention, Positions
from actbridge.interventions.vectors import SteeringVector, VectorLike, as_vector

if TYPE_CHECKING:
    import torch


def _per_layer(model: Model, vectors: Mapping[int, VectorLike]) -> dict[int, npt.NDArray[np.float32]]:
    """``{block index: (d,) float32}`` from a :class:`SteeringVectors` or a ``{layer: vector}``
    mapping (negative layers resolved; each width checked)."""
    if not vectors:
        raise InterventionError(
            "no vectors given: pass a SteeringVectors or {layer: vector} with one or more"
        )
    out: dict[int, npt.NDArray[np.float32]] = {}
    for layer, v in vectors.items():
        vec, own = as_vector(v)
        if own is not None and own != layer:
            raise InterventionError(f"key {layer} holds the vector of layer {own}")
        (index,) = layer_indices(model, [layer])
        if index in out:
            raise InterventionError(f"layer {layer} is given twice (as {index})")
        _check_width(model, vec)
        out[index] = vec
    return out


def _placed(
    model: Model,
    vector: VectorLike | Mapping[int, VectorLike],
    layers: int | Sequence[int] | None,
    argument: str,
) -> dict[int, npt.NDArray[np.float32]]:
    """``{block index: (d,) float32}`` for an intervention: a :class:`SteeringVectors` (or
    ``{layer: vector}``) as it is, else one vector at ``layers`` (default: its own layer).
    ``argument`` names the layers parameter in the errors."""
    if isinstance(vector, Mapping):
        if layers is not None:
            raise InterventionError(f"a SteeringVectors carries its layers; leave {argument}= out")
        return _per_layer(model, vector)
    vec, own = as_vector(vector)
    if layers is None and own is None:
        raise InterventionError(f"pass {argument}=... (a raw tensor carries no layer)")
    chosen = layer_indices(model, layers if layers is not None else int(own))  # type: ignore[arg-type]
    _check_width(model, vec)
    return {index: vec for index in chosen}


def vector_where(
    vector: VectorLike | Mapping[int, VectorLike], where: str | Sequence[str] | None
) -> list[str]:
    """``where`` checked, or (None) the hook point the vector(s) were read at ("resid_post" for
    raw tensors); the vectors of one set must agree."""
    if where is not None:
        return check_where(where)
    items = list(vector.values()) if isinstance(vector, Mapping) else [vector]
    found = {v.where for v in items if isinstance(v, SteeringVector)} or {"resid_post"}
    if len(found) > 1:
        raise InterventionError(
            f"these vectors were read at different hook points {sorted(found)}; apply each set "
            "separately or pass where=... to place them all at one"
        )
    return list(found)


class steer(Intervention):  # noqa: N801 - used like a function: `with ab.steer(model, v, 4.0):`
    """Add ``alpha · vector`` to the residual stream after block ``layer`` (default: the
    vector's own layer) at ``positions``. ``vector`` may also be a :class:`SteeringVectors` (or
    a ``{layer: vector}`` mapping): each block then gets its own vector, all with the one
    ``alpha``, from one set of hooks (steering-vectors' multi-layer ``apply``).

    ``where``: the hook point of the block to add it at (default: where the vector was read,
    :attr:`SteeringVector.where`; "resid_post" for a raw tensor); "attn_out" / "mlp_out" add it
    to the block's attention / MLP write, "resid_pre" to its input, "embed" to the token
    embeddings."""

    def __init__(
        self,
        model: Model,
        vector: VectorLike | Mapping[int, VectorLike],
        alpha: float = 1.0,
        positions: Positions = "all",
        layer: int | None = None,
        *,
        where: str | None = None,
    ) -> None:
        vectors = _placed(model, vector, layer, "layer")
        if where is not None and not isinstance(where, str):
            raise InterventionError(f"steer adds at one hook point; pass where='...', not {where!r}")
        super().__init__(model, sorted(vectors), vector_where(vector, where))
        if not (isinstance(positions, str) and positions in POSITIONS) and not callable(positions):
            raise InterventionError(f"positions must be one of {POSITIONS} or a callable, not {positions!r}")
        self.vectors, self.alpha, self.positions = vectors, float(alpha), positions
        self._cast: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}

    @property
    def vector(self) -> npt.NDArray[np.float32]:
        """The ``(d,)`` vector of a one-layer steer (the first layer's of a multi-layer one)."""
        return self.vectors[self.layers[0]]

    def edit(self, layer: int, h: Tensor) -> Tensor:
        if self.alpha == 0.0:
            return h
        key = (layer, h.device, h.dtype)
        if key not in self._cast:
            import torch

            self._cast[key] = (
                torch.as_tensor(self.vectors[layer], device=h.device, dtype=h.dtype) * self.alpha
            )
        where = self.calls.select(self.positions, h)
        delta = self._cast[key]
        return h + delta if where is None else h + where * delta


class ablate(Intervention):  # noqa: N801
    """Project ``direction`` out of the residual stream after each block in ``layers`` (default:
    the direction's layer), at every position: ``h ← h − (h·v̂) v̂``. A :class:`SteeringVectors`
    (or ``{layer: direction}``) ablates each block's own direction.

    ``where``: the hook point(s) of each block to project at (default: where the direction was
    read; see :func:`directional_ablation` for every residual write of every block)."""

    def __init__(
        self,
        model: Model,
        direction: VectorLike | Mapping[int, VectorLike],
        layers: int | Sequence[int] | None = None,
        *,
        where: str | Sequence[str] | None = None,
    ) -> None:
        vectors = _placed(model, direction, layers, "layers")
        super().__init__(model, sorted(vectors), vector_where(direction, where))
        self.units: dict[int, npt.NDArray[np.float32]] = {}
        for index, vec in vectors.items():
            norm = float(np.linalg.norm(vec))
            if norm == 0:
                raise InterventionError("cannot ablate a zero direction")
            self.units[index] = vec / norm
        self._cast: dict[tuple[int, torch.device], Tensor] = {}

    @property
    def unit(self) -> npt.NDArray[np.float32]:
        """The unit direction of the first ablated block."""
        return self.units[self.layers[0]]

    def edit(self, layer: int, h: Tensor) -> Tensor:
        import torch

        key = (layer, h.device)
        if key not in self._cast:
            self._cast[key] = torch.as_tensor(self.units[layer], device=h.device, dtype=torch.float32)
        u = self._cast[key]
        hf = h.float()
        return (hf - (hf @ u).unsqueeze(-1) * u).to(h.dtype)


def directional_ablation(model: Model, direction: VectorLike) -> ablate:
    """Directional ablation (Arditi et al. 2024): project the one ``direction`` out of every
    write to the residual stream (the token embeddings and every block's attention and MLP
    outputs, :data:`actbridge.hooks.RESIDUAL_WRITES`), so no block ever reads along it and the
    stream never carries it. :func:`actbridge.orthogonalize` bakes the same edit into the
    weights."""
    if isinstance(direction, Mapping):
        raise InterventionError("directional ablation removes one direction everywhere; pass one vector")
    every = list(range(len(decoder_blocks(model))))
    return ablate(model, direction, every, where=RESIDUAL_WRITES)


def _check_width(model: Model, vec: npt.NDArray[np.float32]) -> None:
    d = model_width(model)
    if vec.shape[0] != d:
        raise InterventionError(
            f"the vector has {vec.shape[0]} dimensions but {type(model).__name__} has d_model={d}"
        )
