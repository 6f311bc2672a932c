"""Finding the decoder blocks of a Hugging Face causal LM and reading their outputs.

The residual stream "at layer L" is the output of decoder block ``L`` (0-based), which equals
``hidden_states[L + 1]`` of ``model(..., output_hidden_states=True)`` for every block but the
last (there, transformers applies the final norm to ``hidden_states[-1]``; we return the raw
block output).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from actbridge._typing import Model, Tensor, Tokenizer
from actbridge.errors import HookError

if TYPE_CHECKING:
    import torch

#: Where common architectures keep their block list (Llama, Mistral, Qwen2/3, Gemma 1-3, Phi,
#: OLMo: ``model.layers``; Gemma 3 multimodal: ``model.language_model.layers``; GPT-2, GPT-J,
#: Bloom, Falcon: ``transformer.h``; GPT-NeoX / Pythia: ``gpt_neox.layers``; OPT:
#: ``model.decoder.layers``; MPT: ``transformer.blocks``).
BLOCK_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.blocks",
)


def decoder_blocks(model: Model) -> torch.nn.ModuleList:
    """The ``torch.nn.ModuleList`` of ``model``'s decoder blocks.

    Known layouts first (:data:`BLOCK_PATHS`); otherwise the longest module list whose entries
    all have one class. Raises :class:`HookError` listing the module lists it saw.
    """
    import torch

    for path in BLOCK_PATHS:
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList) and len(obj) > 0:
            return obj
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    uniform = [(name, m) for name, m in lists if len({type(c) for c in m}) == 1]
    if uniform:
        return max(uniform, key=lambda nm: len(nm[1]))[1]
    seen = ", ".join(f"{name or '<root>'} ({len(m)} modules)" for name, m in lists) or "none"
    raise HookError(
        f"could not find the decoder blocks of {type(model).__name__}: no module list of identical "
        f"blocks (module lists found: {seen}). Pass a model with a standard layout, e.g. one of "
        f"{', '.join(BLOCK_PATHS)}."
    )


def model_width(model: Model) -> int:
    """``d_model``: the width of ``model``'s residual stream (that of its input embeddings)."""
    embeddings: Any = model.get_input_embeddings()
    return int(embeddings.embedding_dim)


def layer_indices(model: Model, layers: int | Sequence[int]) -> list[int]:
    """Normalise layer indices (negative counts from the end) and check they exist."""
    n = len(decoder_blocks(model))
    wanted = [layers] if isinstance(layers, int) else list(layers)
    if not wanted:
        raise HookError("no layers given; pass e.g. layers=[6, 13]")
    out = []
    for layer in wanted:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise HookError(f"layer {layer!r} is not an integer")
        if not -n <= layer < n:
            raise HookError(
                f"layer {layer} is out of range: {type(model).__name__} has {n} decoder blocks (0..{n - 1})"
            )
        out.append(layer % n)
    if len(set(out)) != len(out):
        raise HookError(f"layers {wanted} name the same block twice")
    return out


def block_output(output: Tensor | tuple[Any, ...]) -> Tensor:
    """The hidden-state tensor of a block's forward output (a tensor, or a tuple starting with one)."""
    h: Tensor = output[0] if isinstance(output, tuple) else output
    return h


class _StopForward(Exception):
    """Raised by the last capture hook to skip the rest of the forward pass."""


@contextmanager
def capture_residuals(model: Model, layers: Sequence[int], stop: bool = True) -> Iterator[dict[int, Tensor]]:
    """Record the outputs of blocks ``layers`` (``(batch, seq, d)`` tensors) into the yielded
    dict on each forward pass; with ``stop``, the pass ends after the last of them (no later
    blocks, no LM head), so call the model through :func:`forward_to_layers`. Hooks are removed
    on exit, also on error."""
    blocks = decoder_blocks(model)
    got: dict[int, Tensor] = {}
    last = max(layers)

    def hook_for(layer: int) -> Callable[[torch.nn.Module, Any, Any], None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            got[layer] = block_output(output)
            if stop and layer == last:
                raise _StopForward

        return hook

    handles = [blocks[layer].register_forward_hook(hook_for(layer)) for layer in layers]
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


def forward_to_layers(model: Model, layers: Sequence[int], **inputs: Any) -> dict[int, Tensor]:
    """Run ``model(**inputs)`` only as far as the last of ``layers``; the blocks' outputs."""
    with capture_residuals(model, layers, stop=True) as got:
        try:
            model(**inputs)
        except _StopForward:
            pass
    missing = [layer for layer in layers if layer not in got]
    if missing:
        raise HookError(f"the forward pass never reached layers {missing}")
    return dict(got)


def pad_batch(
    ids_list: Sequence[npt.NDArray[np.int64]], tokenizer: Tokenizer
) -> tuple[Tensor, Tensor, npt.NDArray[np.int64]]:
    """Pad token id arrays on the tokenizer's padding side: ``(input_ids, attention_mask,
    starts)`` where ``starts[i]`` is where sequence ``i`` begins."""
    import torch

    lengths = np.array([len(x) for x in ids_list])
    b, t = len(ids_list), int(lengths.max())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = np.full((b, t), pad, dtype=np.int64)
    mask = np.zeros((b, t), dtype=np.int64)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    starts = (t - lengths) if left else np.zeros(b, dtype=np.int64)
    for i, x in enumerate(ids_list):
        ids[i, starts[i] : starts[i] + len(x)] = x
        mask[i, starts[i] : starts[i] + len(x)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask), starts


#: The keyword a model's ``forward`` takes its KV cache under: ``past_key_values`` up to
#: transformers 5.23, ``cache`` from 5.24 on (the old name is still accepted there, with a
#: FutureWarning, until 5.40).
CACHE_KEYWORDS = ("cache", "past_key_values")


def cache_keyword(model: Model) -> str:
    """The keyword ``model.forward`` takes a KV cache under (see :data:`CACHE_KEYWORDS`)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    for name in CACHE_KEYWORDS:
        if name in params:
            return name
    raise HookError(
        f"{type(model).__name__}.forward takes no KV cache (none of {', '.join(CACHE_KEYWORDS)}); "
        "generation-time interventions that run a second model need one"
    )


def passed_cache(kwargs: dict[str, Any]) -> Any:
    """The KV cache among a model call's keyword arguments, under either name (or None)."""
    for name in CACHE_KEYWORDS:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def model_inputs(model: Model, input_ids: Tensor, mask: Tensor) -> dict[str, Any]:
    """Keyword arguments for a padded forward pass (position ids from the mask when the model
    takes them, so left padding does not shift positions)."""
    import inspect

    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask, "use_cache": False}
    if "position_ids" in inspect.signature(model.forward).parameters:
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    return kwargs


def forward_padded(
    model: Model, tokenizer: Tokenizer, ids_list: Sequence[npt.NDArray[np.int64]], layers: Sequence[int]
) -> tuple[dict[int, Tensor], Tensor, npt.NDArray[np.int64]]:
    """Pad token id arrays (:func:`pad_batch`), run ``model`` up to the last of ``layers`` under
    inference mode, and return ``({layer: (batch, seq, d)}, attention_mask on the model's
    device, starts)``."""
    import torch

    ids, mask, starts = pad_batch(ids_list, tokenizer)
    device = next(model.parameters()).device
    ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
    with torch.inference_mode():
        hs = forward_to_layers(model, layers, **model_inputs(model, ids, mask))
    return hs, mask, starts
