"""Where a map's rows were read: the model, block and hook point of its source and its target
side, from the store it was fitted on (recorded in the map's provenance and saved with it).

A map fitted at one hook point carries vectors read at that point only: a map fitted on
``attn_out`` rows says nothing about block outputs. :func:`actbridge.transfer_vector` uses this
to read the source at the right point, to place the mapped vector at the map's target block and
point, and to refuse a vector read elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from actbridge._typing import Map
from actbridge.hooks import HOOK_POINTS, site_point

__all__ = ["MapSites", "ReadAt", "map_sites"]


@dataclass(frozen=True)
class ReadAt:
    """One side of a map: block ``layer`` (a resolved, non-negative block index; None for the
    embeddings) at hook point ``where`` of ``model`` (its name as loaded; "" if unrecorded)."""

    model: str
    layer: int | None
    where: str

    def describe(self) -> str:
        at = "the embeddings" if self.where == "embed" else f"block {self.layer} ({self.where})"
        return f"{at} of {self.model}" if self.model else at


@dataclass(frozen=True)
class MapSites:
    """Where a map's source rows and target rows were read."""

    source: ReadAt
    target: ReadAt


def map_sites(m: Map) -> MapSites | None:
    """The sites ``m`` was fitted on, from its provenance: known for maps fitted on a store of
    :func:`actbridge.collect_pair` (sites ``source``/``target``) or :func:`actbridge.collect`
    (sites ``layer{L}``, ``layer{L}.{where}``, ``embed``), fresh or loaded from disk; None for a
    map fitted on arrays, built by hand or loaded from another tool's files."""
    provenance = getattr(m, "provenance", None) or {}
    metadata = (provenance.get("store_metadata") or {}).get("collect")  # collect()'s settings
    names = [provenance.get("source_site"), provenance.get("target_site")]
    if not isinstance(metadata, Mapping) or not all(isinstance(n, str) for n in names):
        return None
    source, target = (_side(metadata, str(name)) for name in names)
    if source is None or target is None:
        return None
    return MapSites(source, target)


def _side(metadata: Mapping[str, Any], site: str) -> ReadAt | None:
    """One site of a store as a :class:`ReadAt`, from the settings its collection recorded
    (None when they do not say)."""
    kind = metadata.get("kind")
    if kind == "pair" and site in ("source", "target"):
        side = metadata.get(site)
        if not isinstance(side, Mapping):
            return None
        layers, where = side.get("layers"), side.get("where", ["resid_post"])  # older stores: outputs
        where = where[0] if isinstance(where, list) and len(where) == 1 else where
        if not (isinstance(layers, list) and len(layers) == 1 and isinstance(layers[0], int)):
            return None
        if where not in HOOK_POINTS:
            return None
        return ReadAt(str(side.get("model", "")), None if where == "embed" else layers[0], where)
    if kind == "layers":
        point = site_point(site)
        if point is None:
            return None
        models = metadata.get("models") or [""]
        layer, where = point
        return ReadAt(str(models[0]), layer, where)
    return None
