"""Interventions that replace a layer's residual stream: substitution through a map, mean
ablation, and the safety switch.

- :class:`substitute`: the target's block-``layer`` output becomes ``M(h_s)``, the mapped
  source activations on the same tokens (same tokenizer). During ``generate()`` the source model
  runs alongside, one step at a time, with a KV cache of its own. Used to validate maps.
- :class:`mean_ablate`: the block output becomes a fixed mean vector (the baseline for
  CE-recovered).
- :class:`SafetySwitch`: the block output ``h`` becomes ``M(h)`` (an autoencoder trained from a
  fine-tuned model's activations to its base model's); toggled with ``.on()`` / ``.off()``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from actbridge._typing import Map, Model, Tensor
from actbridge.errors import InterventionError
from actbridge.hooks import cache_keyword, forward_to_layers, input_device, layer_indices, model_width
from actbridge.interventions.base import Intervention, MapModules, torch_map


class substitute(Intervention):  # noqa: N801 - used like a function in `with`
    """Replace ``target_model``'s residual stream after block ``layer`` with
    ``map(source_model's residual stream after block source_layer)`` on the same input ids, at
    every position. The two models must share a tokenizer (for different tokenizers, evaluate
    on aligned positions of a paired store instead)."""

    def __init__(
        self, target_model: Model, layer: int, source_model: Model, source_layer: int, map: Map
    ) -> None:  # noqa: A002
        super().__init__(target_model, [layer])
        self.source = source_model
        (self.source_layer,) = layer_indices(source_model, [source_layer])
        d_s = model_width(source_model)
        d_t = model_width(target_model)
        if (map.d_source, map.d_target) != (d_s, d_t):
            raise InterventionError(
                f"the map is {map.d_source} -> {map.d_target}, the models are {d_s} -> {d_t}"
            )
        self.map = map
        self._modules: MapModules = {}
        self._cache: Any = None
        self._cache_keyword: str | None = None  # looked up at the first cached call

    def _source_states(self) -> Tensor:
        """The source model's block output for the target's current call."""
        import torch

        calls = self.calls
        if calls.input_ids is None:
            raise InterventionError(
                "substitution needs input_ids (inputs_embeds cannot be fed to the source model)"
            )
        device = input_device(self.source)
        kwargs: dict[str, Any] = {"input_ids": calls.input_ids.to(device)}
        if calls.full_mask is not None:
            kwargs["attention_mask"] = calls.full_mask.to(device)
        if calls.position_ids is not None:
            kwargs["position_ids"] = calls.position_ids.to(device)
        if calls.prefill:
            self._cache = None
        kwargs["use_cache"] = calls.cached_call
        if calls.cached_call:  # generation: the source keeps a KV cache of its own
            if self._cache is None:
                if not calls.prefill:
                    raise InterventionError(
                        "a decode step arrived without its prefill; start a new generate()"
                    )
                from transformers import DynamicCache

                self._cache = DynamicCache(config=self.source.config)
            if self._cache_keyword is None:
                self._cache_keyword = cache_keyword(self.source)
            kwargs[self._cache_keyword] = self._cache
        calls.paused = True  # the source may be the target itself (e.g. identity checks)
        try:
            with torch.no_grad():  # not inference_mode: the target's pass may track gradients
                return forward_to_layers(self.source, [self.source_layer], **kwargs)[self.source_layer]
        finally:
            calls.paused = False

    def edit(self, layer: int, h: Tensor) -> Tensor:
        hs = self._source_states()
        module = torch_map(self.map, h.device, h.dtype, self._modules)
        out: Tensor = module(hs.to(device=h.device, dtype=h.dtype))
        if out.shape != h.shape:
            raise InterventionError(
                f"source states {tuple(hs.shape)} do not line up with target states {tuple(h.shape)}"
            )
        return out


class patch(Intervention):  # noqa: N801
    """Set the residual stream after block ``layer`` at given (sequence, position) pairs of one
    teacher-forced batch: ``h[batch_index[i], position[i]] = values[i]`` (``values``: ``(n, d)``)."""

    def __init__(self, model: Model, layer: int, batch_index: Any, position: Any, values: Any) -> None:
        import torch

        super().__init__(model, [layer])
        self.batch_index = torch.as_tensor(batch_index, dtype=torch.long)
        self.position = torch.as_tensor(position, dtype=torch.long)
        self.values = values
        if self.values.shape[0] != len(self.batch_index) or len(self.batch_index) != len(self.position):
            raise InterventionError("patch needs as many values as (batch_index, position) pairs")

    def edit(self, layer: int, h: Tensor) -> Tensor:
        if not self.calls.prefill:
            raise InterventionError("patch is for teacher-forced passes; it cannot follow generation steps")
        out = h.clone()
        b, p = self.batch_index.to(h.device), self.position.to(h.device)
        out[b, p] = self.values.to(device=h.device, dtype=h.dtype)
        return out


class mean_ablate(Intervention):  # noqa: N801
    """Replace the residual stream after block ``layer`` with ``mean`` ``(d,)`` at every position."""

    def __init__(self, model: Model, layer: int, mean: Any) -> None:
        super().__init__(model, [layer])
        vec = np.asarray(mean.detach().float().cpu() if hasattr(mean, "detach") else mean, dtype=np.float32)
        d = model_width(model)
        if vec.shape != (d,):
            raise InterventionError(f"the mean has shape {vec.shape}, the model's residual stream is ({d},)")
        self.mean = vec

    def edit(self, layer: int, h: Tensor) -> Tensor:
        import torch

        return torch.as_tensor(self.mean, device=h.device, dtype=h.dtype).expand_as(h).clone()


class SafetySwitch(Intervention):
    """``h ← map(h)`` after block ``layer`` of ``model``, switchable at run time.

    ``map`` is trained from this (e.g. backdoored, fine-tuned) model's layer activations to the
    base model's at the same layer. ``switch.on()`` / ``switch.off()`` toggle it; ``with
    switch:`` turns it on for the block. Off is exactly the unmodified model.
    """

    def __init__(self, model: Model, layer: int, map: Map) -> None:  # noqa: A002
        super().__init__(model, [layer])
        d = model_width(model)
        if (map.d_source, map.d_target) != (d, d):
            raise InterventionError(
                f"a safety switch maps the model's own space ({d} -> {d}); this map is "
                f"{map.d_source} -> {map.d_target}"
            )
        self.map = map
        self._modules: MapModules = {}

    @property
    def parameters(self) -> int:
        """Parameters of the map (the switch's size)."""
        return int(sum(np.prod(t.shape) for t in self.map.tensors().values()))

    def edit(self, layer: int, h: Tensor) -> Tensor:
        out: Tensor = torch_map(self.map, h.device, h.dtype, self._modules)(h)
        return out

    def __repr__(self) -> str:
        state = "on" if self.active else "off"
        return f"SafetySwitch(layer={self.layers[0]}, {state}, {self.parameters:,} parameters)"
