"""Carrying a steering vector from a source model's space to a target model's through a map."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import overload

import numpy as np
import numpy.typing as npt

from actbridge._typing import Map, Model, Tensor, Texts, Tokenizer
from actbridge.errors import InterventionError
from actbridge.hooks import layer_indices
from actbridge.interventions.aggregators import PAIRED, Aggregator, aggregate, check_aggregator, check_counts
from actbridge.interventions.base import MapModules, torch_map
from actbridge.interventions.vectors import (
    RowPositions,
    SteeringVector,
    SteeringVectors,
    prompt_activations_at,
    prompts_hash,
)
from actbridge.models import model_name
from actbridge.texts import documents


@overload
def transfer_vector(
    vector_or_prompts: SteeringVector | tuple[Texts, Texts],
    map: Map,  # noqa: A002
    source_model: Model | None = None,
    source_tokenizer: Tokenizer | None = None,
    layer: int | None = None,
    *,
    target_layer: int | None = None,
    positions: RowPositions = "last",
    trigger: str | Sequence[str] | None = None,
    batch_size: int = 8,
    generation_prompt: bool = True,
    aggregator: Aggregator = "mean_diff",
) -> SteeringVector: ...


@overload
def transfer_vector(
    vector_or_prompts: SteeringVectors | tuple[Texts, Texts],
    map: Mapping[int, Map],  # noqa: A002
    source_model: Model | None = None,
    source_tokenizer: Tokenizer | None = None,
    layer: None = None,
    *,
    target_layer: Mapping[int, int],
    positions: RowPositions = "last",
    trigger: str | Sequence[str] | None = None,
    batch_size: int = 8,
    generation_prompt: bool = True,
    aggregator: Aggregator = "mean_diff",
) -> SteeringVectors: ...


def transfer_vector(
    vector_or_prompts: SteeringVector | SteeringVectors | tuple[Texts, Texts],
    map: Map | Mapping[int, Map],  # noqa: A002 - the paper's word
    source_model: Model | None = None,
    source_tokenizer: Tokenizer | None = None,
    layer: int | None = None,
    *,
    target_layer: int | Mapping[int, int] | None = None,
    positions: RowPositions = "last",
    trigger: str | Sequence[str] | None = None,
    batch_size: int = 8,
    generation_prompt: bool = True,
    aggregator: Aggregator = "mean_diff",
) -> SteeringVector | SteeringVectors:
    """A steering vector in the target model's space, through ``map`` (source → target).

    - ``vector_or_prompts`` a :class:`SteeringVector` and an affine ``map``: ``W · v`` (the
      bias cancels in a difference of means).
    - ``(pos_prompts, neg_prompts)`` with the source model, tokenizer and ``layer``:
      ``mean(M(h_s⁺)) − mean(M(h_s⁻))``, which any map (autoencoders too) supports.
    ``target_layer`` records where the vector is meant to be applied. ``generation_prompt`` (with
    prompts) as for :meth:`SteeringVector.from_contrast`. ``aggregator`` (with prompts): how the
    mapped contrast activations become one direction, as for
    :meth:`SteeringVector.from_contrast`, in the *target* space: every selected row goes through
    the map, then "mean_diff" takes the difference of the mapped means (token-weighted), and
    the paired aggregators ("paired_mean_diff", "pca_diff", "pca_center", "pca_uncentered",
    "logistic") work on each prompt's mean of mapped rows (prompt-weighted).

    Several layers at once: a :class:`SteeringVectors` (or the prompts) with ``map`` a
    ``{source layer: map}`` and ``target_layer`` a ``{source layer: target layer}``: each layer
    goes through its own map (the prompts in one forward pass of the source model), and the
    result is a :class:`SteeringVectors` keyed by target layer.
    """

    if isinstance(vector_or_prompts, Mapping) or isinstance(map, Mapping):
        return _transfer_layers(
            vector_or_prompts,
            map,
            source_model,
            source_tokenizer,
            target_layer,
            positions=positions,
            trigger=trigger,
            batch_size=batch_size,
            generation_prompt=generation_prompt,
            aggregator=aggregator,
        )
    if target_layer is not None and not isinstance(target_layer, int):
        raise InterventionError(
            "target_layer is one block index for one map (a mapping goes with a map per layer)"
        )

    if isinstance(vector_or_prompts, SteeringVector):
        v = vector_or_prompts
        if aggregator != "mean_diff":
            raise InterventionError(
                "a vector is already aggregated; pass the contrast prompts to choose an aggregator "
                "(transfer_vector((pos, neg), map, model, tok, layer, aggregator=...))"
            )
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
    (index,) = layer_indices(source_model, [layer])
    (vec,) = _mapped_contrast(
        source_model,
        source_tokenizer,
        pos,
        neg,
        {index: map},
        {index: target_layer if target_layer is not None else -1},
        positions=positions,
        trigger=trigger,
        batch_size=batch_size,
        generation_prompt=generation_prompt,
        aggregator=aggregator,
    )
    return vec


def _mapped_contrast(
    source_model: Model,
    source_tokenizer: Tokenizer,
    pos: Texts,
    neg: Texts,
    maps: Mapping[int, Map],
    targets: Mapping[int, int],
    *,
    positions: RowPositions,
    trigger: str | Sequence[str] | None,
    batch_size: int,
    generation_prompt: bool,
    aggregator: Aggregator,
) -> list[SteeringVector]:
    """``mean(M(h_s⁺)) − mean(M(h_s⁻))`` (or ``aggregator`` of the per-prompt mapped means) at
    each resolved source block of ``maps`` (block -> map), through its map, from one forward
    pass of the source model per batch; each vector is meant for block ``targets[block]`` of the
    target model."""
    import torch

    check_aggregator(aggregator)
    check_counts(aggregator, len(documents(pos)), len(documents(neg)))
    paired = aggregator in PAIRED
    layers = list(maps)
    caches: dict[int, MapModules] = {index: {} for index in layers}  # one per map

    def mapped(index: int, rows: Tensor) -> Tensor:  # (n, d_source) -> (n, d_target)
        module = torch_map(maps[index], rows.device, torch.float32, caches[index])
        with torch.inference_mode():
            out: Tensor = module(rows.float())
        return out

    def sum_and_count(rows: Tensor) -> Tensor:  # (n, d) -> (d + 1,): the row sum, then n
        r = rows.double()
        return torch.cat([r.sum(0), r.new_tensor([r.shape[0]])])

    sides = [
        prompt_activations_at(
            source_model,
            source_tokenizer,
            prompts,
            layers,
            positions,
            trigger,
            batch_size,
            None if paired else sum_and_count,
            generation_prompt=generation_prompt,
            per_prompt=paired,
            transform=mapped,
        )
        for prompts in (pos, neg)
    ]

    def direction(index: int) -> npt.NDArray[np.float32]:
        p, n = sides[0][index].cpu().numpy(), sides[1][index].cpu().numpy()
        if paired:
            return aggregate(aggregator, p, n)
        return np.asarray(p[:-1] / p[-1] - n[:-1] / n[-1], dtype=np.float32)

    info_aggregator = {} if aggregator == "mean_diff" else {"aggregator": aggregator}
    return [
        SteeringVector(
            direction(index),
            targets[index],
            "",
            positions if isinstance(positions, str) else "callable",
            prompts_hash(pos, neg),
            {
                "mapped_from": {"model": model_name(source_model), "layer": index},
                "map": type(maps[index]).__name__,
                "generation_prompt": bool(generation_prompt),
                **info_aggregator,
            },
        )
        for index in layers
    ]


def _transfer_layers(
    vectors_or_prompts: SteeringVector | SteeringVectors | tuple[Texts, Texts],
    maps: Map | Mapping[int, Map],
    source_model: Model | None,
    source_tokenizer: Tokenizer | None,
    target_layers: int | Mapping[int, int] | None,
    *,
    positions: RowPositions,
    trigger: str | Sequence[str] | None,
    batch_size: int,
    generation_prompt: bool,
    aggregator: Aggregator,
) -> SteeringVectors:
    """:func:`transfer_vector` for several layers, each through its own map."""

    if not isinstance(maps, Mapping) or not maps:
        raise InterventionError(
            "several layers need one map per layer: map={source_layer: map, ...} (and target_layer="
            "{source_layer: target_layer, ...})"
        )
    if not isinstance(target_layers, Mapping) or set(target_layers) != set(maps):
        raise InterventionError(
            f"target_layer must map every source layer of the maps {sorted(maps)} to its target block, "
            f"got {target_layers!r}"
        )
    if len(set(target_layers.values())) != len(target_layers):
        raise InterventionError(f"two source layers go to the same target block: {dict(target_layers)}")
    if isinstance(vectors_or_prompts, Mapping):
        missing = set(maps) - set(vectors_or_prompts)
        if missing or set(vectors_or_prompts) - set(maps):
            raise InterventionError(
                f"the vectors are at layers {sorted(vectors_or_prompts)}, the maps at {sorted(maps)}; "
                "give one map per vector"
            )
        return SteeringVectors(
            transfer_vector(v, maps[layer], target_layer=target_layers[layer], aggregator=aggregator)
            for layer, v in vectors_or_prompts.items()
        )
    if isinstance(vectors_or_prompts, SteeringVector):
        raise InterventionError("one SteeringVector goes through one map; pass a SteeringVectors for several")
    pos, neg = vectors_or_prompts
    if source_model is None or source_tokenizer is None:
        raise InterventionError("mapping prompts needs source_model and source_tokenizer")
    keys = list(maps)
    layers = layer_indices(source_model, keys)  # resolved blocks, in the keys' order
    return SteeringVectors(
        _mapped_contrast(
            source_model,
            source_tokenizer,
            pos,
            neg,
            {index: maps[key] for index, key in zip(layers, keys, strict=True)},
            {index: target_layers[key] for index, key in zip(layers, keys, strict=True)},
            positions=positions,
            trigger=trigger,
            batch_size=batch_size,
            generation_prompt=generation_prompt,
            aggregator=aggregator,
        )
    )
