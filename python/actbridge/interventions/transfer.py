"""Carrying a steering vector from a source model's space to a target model's through a map."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import overload

import numpy as np
import numpy.typing as npt

from actbridge._typing import Map, Model, Tensor, Texts, Tokenizer
from actbridge.errors import InterventionError
from actbridge.hooks import Where, check_one_where, layer_indices
from actbridge.interventions.aggregators import PAIRED, Aggregator, aggregate, check_aggregator, check_counts
from actbridge.interventions.base import MapModules, torch_map
from actbridge.interventions.vectors import (
    RowPositions,
    SteeringVector,
    SteeringVectors,
    prompt_activations_at,
    prompts_hash,
)
from actbridge.maps.sites import MapSites, ReadAt, map_sites
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
    where: Where | None = None,
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
    where: Where | None = None,
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
    where: Where | None = None,
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

    Hook points and blocks: a map fitted on a store knows where its rows were read
    (:func:`actbridge.maps.sites.map_sites`). The prompts are then read at the map's source
    point and block (``where`` and ``layer`` default to them), the mapped vector is placed at
    the map's target block and point (``target_layer`` defaults to it), and a vector, ``where``,
    ``layer`` or ``target_layer`` that names another point or block is an
    :class:`InterventionError` (a map fitted on ``attn_out`` rows says nothing about block
    outputs). For a map that does not know (fitted on arrays, built by hand), the prompts are
    read at ``where`` (default ``"resid_post"``) and the vector keeps that point.
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
            where=where,
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
        if where is not None:
            raise InterventionError(
                f"where= says where to read contrast prompts; this vector was read at {v.where!r} "
                "(SteeringVector.where), leave where= out"
            )
        sites = map_sites(map)
        check_source(sites, v.layer if v.layer >= 0 else None, v.where, "the vector was read at")
        mapped = (map.weight.astype(np.float64) @ v.vector.astype(np.float64)).astype(np.float32)
        return SteeringVector(
            mapped,
            target_block(sites, target_layer),
            "",
            v.positions,
            v.prompts_hash,
            {"mapped_from": {"model": v.model, "layer": v.layer, "where": v.where}, "map": "affine"},
            where=sites.target.where if sites else v.where,
        )
    pos, neg = vector_or_prompts
    sites = map_sites(map)
    if layer is None and sites is not None:
        layer = 0 if sites.source.layer is None else sites.source.layer  # (embed: any block)
    if source_model is None or source_tokenizer is None or layer is None:
        raise InterventionError("mapping prompts needs source_model, source_tokenizer and layer")
    read_at = check_one_where(where or (sites.source.where if sites else "resid_post"))
    (index,) = layer_indices(source_model, [layer])
    check_source(sites, index, read_at, "the contrast prompts would be read at")
    (vec,) = _mapped_contrast(
        source_model,
        source_tokenizer,
        pos,
        neg,
        {index: map},
        {index: (target_block(sites, target_layer), sites.target.where if sites else read_at)},
        read_at,
        positions=positions,
        trigger=trigger,
        batch_size=batch_size,
        generation_prompt=generation_prompt,
        aggregator=aggregator,
    )
    return vec


def check_source(sites: MapSites | None, layer: int | None, where: str, what: str) -> None:
    """An :class:`InterventionError` unless block ``layer`` (None: unknown) at hook point
    ``where`` is where the map's source rows were read (nothing to check for a map that does
    not know)."""
    if sites is None:
        return
    src = sites.source
    same_block = where == "embed" or layer is None or layer == src.layer
    if where != src.where or not same_block:
        here = ReadAt("", layer, where).describe() if layer is not None else repr(where)
        raise InterventionError(
            f"{what} {here}, but the map was fitted on rows read at {src.describe()}: read the "
            f"source there (where={src.where!r}, layer={src.layer}), or fit a map on a store "
            f"collected at {here} (collect_pair(..., where={where!r}))"
        )


def target_block(sites: MapSites | None, target_layer: int | None) -> int:
    """The target block a mapped vector is for: ``target_layer``, by default the map's target
    block (-1, the last block, for a map that does not know); an :class:`InterventionError`
    when it names another block than the one the map's target rows were read at."""
    known = sites.target.layer if sites is not None else None
    if target_layer is None:
        return known if known is not None else (0 if sites is not None else -1)
    if known is not None and target_layer >= 0 and target_layer != known:
        raise InterventionError(
            f"target_layer={target_layer}, but the map's target rows were read at "
            f"{sites.target.describe() if sites else known}: the map says nothing about block "
            f"{target_layer}; leave target_layer out (it defaults to {known}) or fit a map there"
        )
    return target_layer


def _mapped_contrast(
    source_model: Model,
    source_tokenizer: Tokenizer,
    pos: Texts,
    neg: Texts,
    maps: Mapping[int, Map],
    targets: Mapping[int, tuple[int, str]],
    where: str,
    *,
    positions: RowPositions,
    trigger: str | Sequence[str] | None,
    batch_size: int,
    generation_prompt: bool,
    aggregator: Aggregator,
) -> list[SteeringVector]:
    """``mean(M(h_s⁺)) − mean(M(h_s⁻))`` (or ``aggregator`` of the per-prompt mapped means) at
    each resolved source block of ``maps`` (block -> map) at hook point ``where``, through its
    map, from one forward pass of the source model per batch; each vector is meant for
    ``targets[block]`` (block, hook point) of the target model."""
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
            where=where,
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
            targets[index][0],
            "",
            positions if isinstance(positions, str) else "callable",
            prompts_hash(pos, neg),
            {
                "mapped_from": {"model": model_name(source_model), "layer": index, "where": where},
                "map": type(maps[index]).__name__,
                "generation_prompt": bool(generation_prompt),
                **info_aggregator,
            },
            where=targets[index][1],
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
    where: Where | None,
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
            transfer_vector(
                v, maps[layer], target_layer=target_layers[layer], aggregator=aggregator, where=where
            )
            for layer, v in vectors_or_prompts.items()
        )
    if isinstance(vectors_or_prompts, SteeringVector):
        raise InterventionError("one SteeringVector goes through one map; pass a SteeringVectors for several")
    pos, neg = vectors_or_prompts
    if source_model is None or source_tokenizer is None:
        raise InterventionError("mapping prompts needs source_model and source_tokenizer")
    keys = list(maps)
    layers = layer_indices(source_model, keys)  # resolved blocks, in the keys' order
    sites = {key: map_sites(maps[key]) for key in keys}
    known = {s.source.where for s in sites.values() if s is not None}
    if len(known) > 1:
        raise InterventionError(
            f"the maps were fitted at different hook points {sorted(known)}; one forward pass reads "
            "one point: transfer each map's layer on its own"
        )
    read_at = check_one_where(where or (known.pop() if known else "resid_post"))
    targets: dict[int, tuple[int, str]] = {}
    for index, key in zip(layers, keys, strict=True):
        s = sites[key]
        check_source(s, index, read_at, f"layer {key}'s contrast prompts would be read at")
        targets[index] = (target_block(s, target_layers[key]), s.target.where if s else read_at)
    return SteeringVectors(
        _mapped_contrast(
            source_model,
            source_tokenizer,
            pos,
            neg,
            {index: maps[key] for index, key in zip(layers, keys, strict=True)},
            targets,
            read_at,
            positions=positions,
            trigger=trigger,
            batch_size=batch_size,
            generation_prompt=generation_prompt,
            aggregator=aggregator,
        )
    )
