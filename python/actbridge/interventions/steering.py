"""Steering and directional ablation: ``h + α·v`` at chosen positions after one block, and
``h − (h·v̂)v̂`` after each of some blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from actbridge._typing import Model, Tensor
from actbridge.errors import InterventionError
from actbridge.hooks import model_width
from actbridge.interventions.base import POSITIONS, Intervention, Positions
from actbridge.interventions.vectors import VectorLike, as_vector

if TYPE_CHECKING:
    import torch


class steer(Intervention):  # noqa: N801 - used like a function: `with ab.steer(model, v, 4.0):`
    """Add ``alpha · vector`` to the residual stream after block ``layer`` (default: the
    vector's own layer) at ``positions``."""

    def __init__(
        self,
        model: Model,
        vector: VectorLike,
        alpha: float = 1.0,
        positions: Positions = "all",
        layer: int | None = None,
    ) -> None:
        vec, vec_layer = as_vector(vector)
        if layer is None and vec_layer is None:
            raise InterventionError("pass layer=... (a raw tensor carries no layer)")
        super().__init__(model, [layer if layer is not None else vec_layer])  # type: ignore[list-item]
        _check_width(model, vec)
        if not (isinstance(positions, str) and positions in POSITIONS) and not callable(positions):
            raise InterventionError(f"positions must be one of {POSITIONS} or a callable, not {positions!r}")
        self.vector, self.alpha, self.positions = vec, float(alpha), positions
        self._cast: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def edit(self, layer: int, h: Tensor) -> Tensor:
        if self.alpha == 0.0:
            return h
        key = (h.device, h.dtype)
        if key not in self._cast:
            import torch

            self._cast[key] = torch.as_tensor(self.vector, device=h.device, dtype=h.dtype) * self.alpha
        where = self.calls.select(self.positions, h)
        delta = self._cast[key]
        return h + delta if where is None else h + where * delta


class ablate(Intervention):  # noqa: N801
    """Project ``direction`` out of the residual stream after each block in ``layers`` (default:
    the direction's layer), at every position: ``h ← h − (h·v̂) v̂``."""

    def __init__(
        self, model: Model, direction: VectorLike, layers: int | Sequence[int] | None = None
    ) -> None:
        vec, vec_layer = as_vector(direction)
        if layers is None and vec_layer is None:
            raise InterventionError("pass layers=... (a raw tensor carries no layer)")
        chosen: int | Sequence[int] = layers if layers is not None else int(vec_layer)  # type: ignore[arg-type]
        super().__init__(model, chosen)
        _check_width(model, vec)
        norm = float(np.linalg.norm(vec))
        if norm == 0:
            raise InterventionError("cannot ablate a zero direction")
        self.unit = vec / norm
        self._cast: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def edit(self, layer: int, h: Tensor) -> Tensor:
        import torch

        key = (h.device, h.dtype)
        if key not in self._cast:
            self._cast[key] = torch.as_tensor(self.unit, device=h.device, dtype=torch.float32)
        u = self._cast[key]
        hf = h.float()
        return (hf - (hf @ u).unsqueeze(-1) * u).to(h.dtype)


def _check_width(model: Model, vec: npt.NDArray[np.float32]) -> None:
    d = model_width(model)
    if vec.shape[0] != d:
        raise InterventionError(
            f"the vector has {vec.shape[0]} dimensions but {type(model).__name__} has d_model={d}"
        )
