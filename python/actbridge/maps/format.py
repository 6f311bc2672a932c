"""The on-disk format of a map: a directory with ``config.json`` (kind, widths, settings,
metrics, provenance, checksums) and ``model.safetensors`` (the map's ``tensors()``).

Writing and reading the files only; :func:`actbridge.load_map` builds the map objects.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from actbridge import integrity
from actbridge._typing import Map
from actbridge.errors import MapError

__all__ = ["CONFIG", "MAP_FORMAT", "MAP_VERSION", "WEIGHTS", "load_tensors", "save_map"]

MAP_FORMAT = "actbridge.map"
MAP_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def save_map(m: Map, path: str | os.PathLike[str], extra: Mapping[str, Any] | None = None) -> None:
    """Write a map's ``config.json`` and ``model.safetensors`` (its ``tensors()``) into ``path``."""
    from safetensors.numpy import save_file

    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    config = {
        "format": MAP_FORMAT,
        "version": MAP_VERSION,
        "kind": m.kind,
        "source_dim": m.d_source,
        "target_dim": m.d_target,
        "hidden_dim": None,
        **m.config,
        **(extra or {}),
        "metrics": m.metrics,
        "provenance": m.provenance,
    }
    with integrity.replacing(d / WEIGHTS) as tmp:
        save_file(m.tensors(), os.fspath(tmp), metadata={"format": MAP_FORMAT, "kind": m.kind})
    integrity.write_config(d, config, [WEIGHTS], default=_jsonable)


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def load_tensors(path: Path) -> dict[str, npt.NDArray[Any]]:
    from safetensors.numpy import load_file

    if not path.exists():
        raise MapError(f"{path} is missing")
    try:
        return dict(load_file(os.fspath(path)))
    except Exception as e:  # safetensors' own error types: truncated/garbled file
        raise MapError(f"{path} is damaged or not a safetensors file: {e}") from e
