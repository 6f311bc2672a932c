"""Steering vectors in other tools' formats: llama.cpp control vectors (GGUF).

A llama.cpp control vector is a GGUF file with ``general.architecture = "controlvector"``,
``controlvector.model_hint`` and ``controlvector.layer_count``, and one float32 tensor
``direction.N`` of shape ``(n_embd,)`` per steered layer. llama.cpp adds ``direction.N`` (times
``--control-vector-scaled``'s scale) to the output of block ``N`` (0-based), which is what
actbridge calls layer ``N``; llama.cpp never steers block 0. So a vector mapped from a small
model to a large one here runs in llama.cpp on the large model's GGUF file, e.g.

    llama-cli -m qwen2.5-coder-1.5b.gguf --control-vector-scaled refusal.gguf 4.0 ...

which is ``ab.steer(model, vector, alpha=4.0, positions="all")``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from actbridge.errors import InterventionError, VectorCorruptError
from actbridge.interventions.vectors import SteeringVector, SteeringVectors

if TYPE_CHECKING:
    import gguf

__all__ = ["load_control_vector", "save_control_vector"]

#: ``general.architecture`` of a llama.cpp control vector.
ARCH = "controlvector"


def save_control_vector(
    vectors: SteeringVector | SteeringVectors | Iterable[SteeringVector],
    path: str | os.PathLike[str],
    *,
    model_hint: str = "",
) -> Path:
    """Write ``vectors`` (one per layer, all the same width) as a llama.cpp control vector at
    ``path`` (written to a temporary name, then renamed). ``model_hint``: the model family
    llama.cpp prints (e.g. "qwen2"); default: the vectors' model name. Layer 0 and negative
    layers are an :class:`InterventionError` (llama.cpp has no slot for block 0, and a negative
    index needs the model's depth: resolve it first)."""
    import gguf

    if isinstance(vectors, SteeringVector):
        vs = [vectors]
    elif isinstance(vectors, Mapping):  # SteeringVectors / {layer: vector}: its values
        vs = list(vectors.values())
    else:
        vs = list(vectors)
    if not vs:
        raise InterventionError("save_control_vector needs at least one SteeringVector")
    layers = [v.layer for v in vs]
    if any(layer < 1 for layer in layers):
        raise InterventionError(
            f"llama.cpp steers the outputs of blocks 1 and up; got layers {layers} (a negative layer "
            "counts from the end: pass the block index, e.g. via ab.hooks.layer_indices(model, [layer]))"
        )
    if len(set(layers)) != len(layers):
        raise InterventionError(f"one vector per layer; layers {layers} repeat")
    widths = {v.vector.shape[0] for v in vs}
    if len(widths) != 1:
        raise InterventionError(
            f"the vectors have different widths {sorted(widths)}; one model's vectors only"
        )
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), ARCH)
    try:
        writer.add_string(f"{ARCH}.model_hint", model_hint or vs[0].model)
        writer.add_uint32(f"{ARCH}.layer_count", len(vs))
        for v in sorted(vs, key=lambda v: v.layer):
            writer.add_tensor(f"direction.{v.layer}", np.ascontiguousarray(v.vector, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, out)
    return out


def load_control_vector(path: str | os.PathLike[str]) -> SteeringVectors:
    """The directions of a llama.cpp control vector, a :class:`SteeringVectors` (float32,
    checked: the architecture, tensor names ``direction.N`` with N >= 1, one width, finite
    values; anything else is a :class:`VectorCorruptError`)."""
    import gguf

    src = Path(path)
    if not src.is_file():
        raise InterventionError(f"{src} is not a file")
    try:
        reader = gguf.GGUFReader(str(src))
    except Exception as e:  # not GGUF, truncated: gguf raises ValueError and friends
        raise VectorCorruptError(f"{src} is not a readable GGUF file ({e})") from e
    arch = _string_field(reader, "general.architecture")
    if arch != ARCH:
        raise VectorCorruptError(f"{src} is a GGUF file of architecture {arch!r}, not a control vector")
    hint = _string_field(reader, f"{ARCH}.model_hint") or ""
    out: dict[int, SteeringVector] = {}
    for t in reader.tensors:
        prefix, _, index = t.name.partition(".")
        if prefix != "direction" or not index.isdigit() or int(index) < 1:
            raise VectorCorruptError(f"{src}: tensor {t.name!r} is not direction.N (N >= 1)")
        values = np.asarray(t.data)
        if values.dtype != np.float32 or values.ndim != 1:
            raise VectorCorruptError(
                f"{src}: {t.name} is {values.dtype} {values.shape}, not float32 (n_embd,)"
            )
        if not np.isfinite(values).all():
            raise VectorCorruptError(f"{src}: {t.name} holds NaN or infinite values")
        layer = int(index)
        out[layer] = SteeringVector(values.copy(), layer, hint, info={"from": "llama.cpp control vector"})
    if not out:
        raise VectorCorruptError(f"{src} holds no direction tensors")
    if len({v.vector.shape[0] for v in out.values()}) != 1:
        raise VectorCorruptError(f"{src}: the directions have different widths")
    return SteeringVectors(out)


def _string_field(reader: gguf.GGUFReader, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")
