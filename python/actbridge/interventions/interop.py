"""Steering vectors in other tools' formats: llama.cpp control vectors (GGUF, also repeng's
``export_gguf`` / ``import_gguf`` files), and steering-vectors' ``SteeringVector`` and repeng's
``ControlVector`` objects (:func:`from_peer`, :func:`to_steering_vectors`, :func:`to_repeng`).
Both peers key their per-layer directions by the block whose output they modify, as actbridge
does, so a vector converted either way steers the same positions of the same blocks.

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

from actbridge import integrity
from actbridge.errors import InterventionError, VectorCorruptError
from actbridge.interventions.vectors import SteeringVector, SteeringVectors, as_vector

if TYPE_CHECKING:
    import gguf

__all__ = ["from_peer", "load_control_vector", "save_control_vector", "to_repeng", "to_steering_vectors"]

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
    SteeringVectors(vs)  # one per layer, one width: its checks and messages
    out = Path(path)
    with integrity.replacing(out) as tmp:
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


def _as_set(vectors: SteeringVector | Mapping[int, SteeringVector]) -> SteeringVectors:
    if isinstance(vectors, SteeringVector):
        return SteeringVectors([vectors])
    if isinstance(vectors, Mapping):
        return vectors if isinstance(vectors, SteeringVectors) else SteeringVectors(vectors)
    raise InterventionError(f"expected a SteeringVector or SteeringVectors, got {type(vectors).__name__}")


def from_peer(vector: object, *, model: str = "") -> SteeringVectors:
    """A steering-vectors ``SteeringVector`` (``layer_activations``, ``layer_type``
    "decoder_block") or a repeng ``ControlVector`` (``directions``, ``model_type``) as a
    :class:`SteeringVectors` (float32 copies; ``model`` defaults to repeng's ``model_type``).
    Duck-typed, so neither peer needs to be installed to convert its objects."""
    if hasattr(vector, "layer_activations"):
        layer_type = getattr(vector, "layer_type", "decoder_block")
        if layer_type != "decoder_block":
            raise InterventionError(
                f"this steering-vectors vector patches {layer_type!r} layers; actbridge steers block "
                "outputs (decoder_block) only"
            )
        per_layer, source, name = vector.layer_activations, "steering-vectors", model
    elif hasattr(vector, "directions") and hasattr(vector, "model_type"):
        per_layer, source, name = vector.directions, "repeng", model or str(vector.model_type)
    else:
        raise InterventionError(
            f"{type(vector).__name__} is neither a steering-vectors SteeringVector (layer_activations) "
            "nor a repeng ControlVector (directions, model_type)"
        )
    if not isinstance(per_layer, Mapping) or not per_layer:
        raise InterventionError(f"the {source} vector holds no per-layer directions")
    out = []
    for layer, values in per_layer.items():
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise InterventionError(f"the {source} vector's layers must be integers, got {layer!r}")
        arr, _ = as_vector(values)  # float32 (d,); SteeringVector checks it is finite
        out.append(SteeringVector(arr.copy(), int(layer), name, info={"from": source}))
    return SteeringVectors(out)


def to_steering_vectors(vectors: SteeringVector | Mapping[int, SteeringVector]) -> object:
    """``vectors`` as a steering-vectors ``SteeringVector`` (``layer_activations`` float32
    tensors, ``layer_type="decoder_block"``); needs ``pip install steering-vectors``."""
    try:
        import steering_vectors
        import torch
    except ImportError as e:
        raise InterventionError(
            f"converting to steering-vectors needs it installed ({e}): run `pip install --no-deps "
            "steering-vectors` (it declares transformers<5, which it does not need for this)"
        ) from e
    vs = _as_set(vectors)
    return steering_vectors.SteeringVector(
        layer_activations={layer: torch.from_numpy(v.vector.copy()) for layer, v in vs.items()},
        layer_type="decoder_block",
    )


def to_repeng(vectors: SteeringVector | Mapping[int, SteeringVector], *, model_type: str = "") -> object:
    """``vectors`` as a repeng ``ControlVector`` (``directions`` float32 arrays; ``model_type``
    defaults to the vectors' model name); needs ``pip install repeng``. repeng 0.4.0 does not
    import under numpy 2 (it names the removed ``np.float_``); there, exchange files instead:
    :func:`save_control_vector` writes what ``ControlVector.import_gguf`` reads."""
    try:
        from repeng import ControlVector
    except ImportError as e:
        raise InterventionError(
            f"converting to repeng needs it installed ({e}): run `pip install --no-deps repeng`"
        ) from e
    except AttributeError as e:  # repeng 0.4.0 under numpy 2
        raise InterventionError(
            f"repeng does not import with numpy {np.__version__} ({e}); write the vectors with "
            "ab.save_control_vector(vectors, path) and read them with repeng's "
            "ControlVector.import_gguf(path)"
        ) from e
    vs = _as_set(vectors)
    name = model_type or next(iter(vs.values())).model
    return ControlVector(model_type=name, directions={layer: v.vector.copy() for layer, v in vs.items()})
