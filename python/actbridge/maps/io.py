"""Loading a saved map of any kind: actbridge's own format (``maps.format``) or a mapper
released with arXiv 2503.04429."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from actbridge import integrity
from actbridge._typing import Map
from actbridge.errors import MapCorruptError, MapError
from actbridge.maps.affine import AffineMap
from actbridge.maps.autoencoder import AutoencoderMap
from actbridge.maps.format import CONFIG, MAP_FORMAT, WEIGHTS, load_tensors
from actbridge.store import PathLike

__all__ = ["load_map"]


def load_map(path: PathLike) -> Map:
    """Load a map directory: one saved by actbridge (``config.json`` + ``model.safetensors``,
    affine or autoencoder), or a mapper released with arXiv 2503.04429 (``config.json`` with
    ``source_dim``/``target_dim``/``hidden_dim`` + ``pytorch_model.bin``, read with
    ``torch.load(weights_only=True)``: no pickled code runs). Raises :class:`MapError` if pieces
    are missing, the weights are damaged, or the config disagrees with the weights."""
    d = Path(path)
    if not (d / CONFIG).exists():
        raise MapError(f"no map at {d}: {CONFIG} is missing")
    config = integrity.read_config(d / CONFIG, MapCorruptError)
    if config.get("format") != MAP_FORMAT:
        if {"source_dim", "target_dim"} <= config.keys() and (d / "pytorch_model.bin").exists():
            paper: Map = _load_paper_mapper(d, config)
            return paper
        raise MapError(f"{d} is not an actbridge map (config format {config.get('format')!r})")
    kind = config.get("kind")
    integrity.check(config, d, MapCorruptError)
    tensors = load_tensors(d / WEIGHTS)
    meta = {
        "config": {
            k: v
            for k, v in config.items()
            if k in ("method", "ridge", "bias", "backend", "epochs", "lr", "training")
        },
        "metrics": config.get("metrics"),
        "provenance": config.get("provenance"),
    }
    if kind == "affine":
        w, b = tensors.get("weight"), tensors.get("bias")
        if w is None or b is None:
            raise MapError(f"{d / WEIGHTS} lacks 'weight' or 'bias' (has {sorted(tensors)})")
        m: Map = AffineMap(w, b, **meta)
    elif kind == "autoencoder":
        m = AutoencoderMap.from_state_dict(tensors, history=config.get("history"), **meta)
    else:
        raise MapError(f"unknown map kind {kind!r} in {d / CONFIG}")
    _check_dims(d, config, m)
    return m


def _check_dims(d: Path, config: Mapping[str, Any], m: Map) -> None:
    want = (config.get("source_dim"), config.get("hidden_dim"), config.get("target_dim"))
    have = (m.d_source, getattr(m, "hidden", None), m.d_target)
    if want[0] != have[0] or want[2] != have[2] or (want[1] is not None and want[1] != have[1]):
        raise MapError(
            f"{d}: config says {want[0]} -> {want[2]} (hidden {want[1]}) but the weights are "
            f"{have[0]} -> {have[2]} (hidden {have[1]})"
        )


def _load_paper_mapper(d: Path, config: Mapping[str, Any]) -> Any:
    import torch

    try:
        state = torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, or pickled objects weights_only refuses
        raise MapError(f"{d / 'pytorch_model.bin'} could not be read as plain tensors: {e}") from e
    if isinstance(state, dict) and "model_state_dict" in state:
        state = state["model_state_dict"]
    if not isinstance(state, dict):
        raise MapError(f"{d / 'pytorch_model.bin'} does not hold a state dict")
    m = AutoencoderMap.from_state_dict(
        state,
        config={"method": "autoencoder", "origin": "arXiv 2503.04429"},
        provenance={"loaded_from": os.fspath(d)},
    )
    _check_dims(d, config, m)
    return m
