"""Carrying a steering vector from a source model's space to a target model's through a map."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from actbridge._typing import Map, Model, Texts, Tokenizer
from actbridge.errors import InterventionError
from actbridge.hooks import layer_indices
from actbridge.interventions.base import MapModules, torch_map
from actbridge.interventions.vectors import RowPositions, SteeringVector, prompt_activations, prompts_hash
from actbridge.models import model_name


def transfer_vector(
    vector_or_prompts: SteeringVector | tuple[Texts, Texts],
    map: Map,  # noqa: A002 - the paper's word
    source_model: Model | None = None,
    source_tokenizer: Tokenizer | None = None,
    layer: int | None = None,
    *,
    target_layer: int | None = None,
    positions: RowPositions = "last",
    trigger: str | Sequence[str] | None = None,
    batch_size: int = 8,
    generation_prompt: bool = True,
) -> SteeringVector:
    """A steering vector in the target model's space, through ``map`` (source → target).

    - ``vector_or_prompts`` a :class:`SteeringVector` and an affine ``map``: ``W · v`` (the
      bias cancels in a difference of means).
    - ``(pos_prompts, neg_prompts)`` with the source model, tokenizer and ``layer``:
      ``mean(M(h_s⁺)) − mean(M(h_s⁻))``, which any map (autoencoders too) supports.
    ``target_layer`` records where the vector is meant to be applied. ``generation_prompt`` (with
    prompts) as for :meth:`SteeringVector.from_contrast`.
    """
    import torch

    if isinstance(vector_or_prompts, SteeringVector):
        v = vector_or_prompts
        if not hasattr(map, "weight"):
            raise InterventionError(
                "only an affine map carries a vector by itself (W·v); for an autoencoder pass the "
                "contrast prompts and the source model: transfer_vector((pos, neg), map, model, tok, layer)"
            )
        if v.vector.shape[0] != map.weight.shape[1]:
            raise InterventionError(
                f"the vector has {v.vector.shape[0]} dims, the map takes {map.weight.shape[1]}"
            )
        mapped = (map.weight.astype(np.float64) @ v.vector.astype(np.float64)).astype(np.float32)
        return SteeringVector(
            mapped,
            target_layer if target_layer is not None else -1,
            "",
            v.positions,
            v.prompts_hash,
            {"mapped_from": {"model": v.model, "layer": v.layer}, "map": "affine"},
        )
    pos, neg = vector_or_prompts
    if source_model is None or source_tokenizer is None or layer is None:
        raise InterventionError("mapping prompts needs source_model, source_tokenizer and layer")
    (layer,) = layer_indices(source_model, [layer])
    cache: MapModules = {}

    def mapped_mean(prompts: Texts) -> npt.NDArray[np.float64]:
        acts = prompt_activations(
            source_model,
            source_tokenizer,
            prompts,
            layer,
            positions,
            trigger,
            batch_size,
            generation_prompt=generation_prompt,
        )
        module = torch_map(map, acts.device, torch.float32, cache)
        with torch.inference_mode():
            mean: npt.NDArray[np.float64] = module(acts.float()).double().mean(0).cpu().numpy()
        return mean

    vec = (mapped_mean(pos) - mapped_mean(neg)).astype(np.float32)
    return SteeringVector(
        vec,
        target_layer if target_layer is not None else -1,
        "",
        positions if isinstance(positions, str) else "callable",
        prompts_hash(pos, neg),
        {
            "mapped_from": {"model": model_name(source_model), "layer": layer},
            "map": type(map).__name__,
            "generation_prompt": bool(generation_prompt),
        },
    )
