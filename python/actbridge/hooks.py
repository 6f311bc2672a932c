"""Finding the decoder blocks of a Hugging Face causal LM, its hook points, and reading them.

The residual stream "at layer L" is the output of decoder block ``L`` (0-based), which equals
``hidden_states[L + 1]`` of ``model(..., output_hidden_states=True)`` for every block but the
last (there, transformers applies the final norm to ``hidden_states[-1]``; we return the raw
block output).

Hook points (``where=``, TransformerLens's names), each a ``(batch, seq, d_model)`` tensor:

- ``"resid_post"`` (the default everywhere): the output of block ``L``;
- ``"resid_pre"``: the input of block ``L`` (the output of block ``L - 1``; for ``L = 0`` what
  the model feeds its first block: the token embeddings, plus position embeddings in GPT-2);
- ``"attn_out"`` / ``"mlp_out"``: what block ``L``'s attention / MLP adds to the residual
  stream: the sub-module's output, or, in models that normalise it before the addition (Gemma 2
  and 3, OLMo 2: ``post_attention_layernorm`` / ``post_feedforward_layernorm``), that norm's;
- ``"embed"``: the token embedding module's output (one per model: the layer is not used).

``"embed"``, ``"attn_out"`` and ``"mlp_out"`` are the residual *writes*
(:data:`RESIDUAL_WRITES`): the residual stream after block ``L`` is their sum up to ``L``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from actbridge._typing import Model, Tensor, Tokenizer
from actbridge.errors import HookError

if TYPE_CHECKING:
    import torch
    from torch.utils.hooks import RemovableHandle

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


#: A hook point's name (see the module docstring).
Where = Literal["embed", "resid_pre", "attn_out", "mlp_out", "resid_post"]
#: Every hook point, in the order a block's forward pass reaches them.
HOOK_POINTS: tuple[Where, ...] = get_args(Where)
#: The hook points whose outputs are added to the residual stream.
RESIDUAL_WRITES: tuple[Where, ...] = ("embed", "attn_out", "mlp_out")
#: ``(layer, where)``: one hook point of one block.
Point = tuple[int, str]

#: Names of a block's attention and MLP sub-modules across architectures (Llama, Qwen, Gemma,
#: Mistral, Phi-3, OLMo: ``self_attn`` / ``mlp``; GPT-2, GPT-J: ``attn`` / ``mlp``; GPT-NeoX:
#: ``attention``; Bloom, Falcon: ``self_attention``; Mixtral-style: ``block_sparse_moe``).
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe")


def check_where(where: str | Sequence[str]) -> list[str]:
    """``where`` as a list of known hook point names (a :class:`HookError` lists them if not)."""
    wanted = [where] if isinstance(where, str) else list(where)
    if not wanted:
        raise HookError(f"no hook points given; pass where= one or more of {HOOK_POINTS}")
    for w in wanted:
        if w not in HOOK_POINTS:
            raise HookError(f"unknown hook point {w!r}; use one of {HOOK_POINTS}")
    if len(set(wanted)) != len(wanted):
        raise HookError(f"hook points {wanted} name one point twice")
    return wanted


def check_one_where(where: str) -> str:
    """``where`` checked as one hook point name."""
    if not isinstance(where, str):
        raise HookError(f"pass one hook point name (one of {HOOK_POINTS}), not {where!r}")
    return check_where(where)[0]


def point_order(point: Point) -> tuple[bool, int, int]:
    """Sort key putting hook points in forward order: the embeddings, then block by block
    ``resid_pre``, ``attn_out``, ``mlp_out``, ``resid_post``."""
    layer, where = point
    return (where != "embed", layer, HOOK_POINTS.index(where))


def hook_points(layers: Sequence[int], where: str | Sequence[str]) -> list[Point]:
    """Every ``(layer, where)`` of ``layers`` × ``where`` in forward order, ``"embed"`` once
    (under the first layer)."""
    wanted = check_where(where)
    points: list[Point] = []
    for layer in sorted(layers):
        for w in wanted:
            if w == "embed" and any(p[1] == "embed" for p in points):
                continue
            points.append((layer, w))
    return sorted(points, key=point_order)


def _child(block: Any, names: Sequence[str]) -> Any:
    for name in names:
        module = getattr(block, name, None)
        if module is not None:
            return module
    return None


def point_module(model: Model, point: Point) -> tuple[torch.nn.Module, bool]:
    """The module to hook for ``point`` and whether the hook is a forward *pre*-hook (on its
    input, for ``"resid_pre"``) rather than a forward hook on its output."""
    layer, where = point
    if where == "embed":
        embeddings: torch.nn.Module = model.get_input_embeddings()
        return embeddings, False
    block: Any = decoder_blocks(model)[layer]
    if where == "resid_post":
        return block, False
    if where == "resid_pre":
        return block, True
    post_normed = getattr(block, "post_feedforward_layernorm", None) is not None
    if where == "attn_out":
        module = block.post_attention_layernorm if post_normed else _child(block, ATTENTION_NAMES)
    else:
        module = block.post_feedforward_layernorm if post_normed else _child(block, MLP_NAMES)
    if module is None:
        children = ", ".join(name for name, _ in block.named_children())
        names = ATTENTION_NAMES if where == "attn_out" else MLP_NAMES
        raise HookError(
            f"could not find the {'attention' if where == 'attn_out' else 'MLP'} of "
            f"{type(block).__name__} (looked for {', '.join(names)}; its modules are {children}); "
            "hook 'resid_pre' / 'resid_post' instead"
        )
    return module, False


def block_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """The hidden states a block's forward call received (first positional argument, or the
    ``hidden_states`` keyword)."""
    h: Tensor = args[0] if args else kwargs["hidden_states"]
    return h


def replace_input(args: tuple[Any, ...], kwargs: dict[str, Any], h: Tensor) -> tuple[Any, dict[str, Any]]:
    """A block call's ``(args, kwargs)`` with its hidden states replaced by ``h``."""
    if args:
        return (h, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


def register_point_hook(
    model: Model, point: Point, edit: Callable[[Tensor], Tensor | None]
) -> RemovableHandle:
    """Hook ``point``: ``edit(h)`` sees its ``(batch, seq, d)`` tensor on every forward call
    and returns a replacement (or None to leave it). Returns the handle to remove."""
    module, pre = point_module(model, point)
    if pre:

        def pre_hook(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            new = edit(block_input(args, kwargs))
            return None if new is None else replace_input(args, kwargs, new)

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def hook(mod: Any, args: Any, output: Any) -> Any:
        new = edit(block_output(output))
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return module.register_forward_hook(hook)


def point_site(point: Point) -> str:
    """A hook point's site name in a store: ``layer{L}`` (``resid_post``), ``layer{L}.{where}``,
    or ``embed``."""
    layer, where = point
    if where == "embed":
        return "embed"
    return f"layer{layer}" if where == "resid_post" else f"layer{layer}.{where}"


def site_point(site: str) -> tuple[int | None, str] | None:
    """The ``(layer, where)`` a store site name of :func:`point_site` stands for (layer None for
    ``embed``), or None for any other name (``source``, ``target``, a column)."""
    if site == "embed":
        return None, "embed"
    m = re.fullmatch(r"layer(\d+)(?:\.(\w+))?", site)
    if m is None or (m.group(2) is not None and m.group(2) not in HOOK_POINTS[1:-1]):
        return None
    return int(m.group(1)), m.group(2) or "resid_post"


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
def capture_points(model: Model, points: Sequence[Point], stop: bool = True) -> Iterator[dict[Point, Tensor]]:
    """Record the tensors at ``points`` (``(batch, seq, d)``) into the yielded dict on each
    forward pass; with ``stop``, the pass ends once all of them are recorded (no later blocks,
    no LM head), so call the model through :func:`forward_to_points`. Hooks are removed on
    exit, also on error."""
    got: dict[Point, Tensor] = {}
    wanted = len(set(points))

    def hook_for(point: Point) -> Callable[[Tensor], None]:
        def record(h: Tensor) -> None:
            got[point] = h
            if stop and len(got) == wanted:
                raise _StopForward

        return record

    handles: list[RemovableHandle] = []
    try:
        for point in dict.fromkeys(points):
            handles.append(register_point_hook(model, point, hook_for(point)))
        yield got
    finally:
        for h in handles:
            h.remove()


def forward_to_points(model: Model, points: Sequence[Point], **inputs: Any) -> dict[Point, Tensor]:
    """Run ``model(**inputs)`` only as far as it takes to reach every one of ``points``."""
    with capture_points(model, points, stop=True) as got:
        try:
            model(**inputs)
        except _StopForward:
            pass
    missing = [p for p in points if p not in got]
    if missing:
        raise HookError(f"the forward pass never reached hook points {missing}")
    return dict(got)


def forward_to_layers(model: Model, layers: Sequence[int], **inputs: Any) -> dict[int, Tensor]:
    """Run ``model(**inputs)`` only as far as the last of ``layers``; the blocks' outputs."""
    got = forward_to_points(model, [(layer, "resid_post") for layer in layers], **inputs)
    return {layer: got[(layer, "resid_post")] for layer in layers}


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


def input_device(model: Model) -> torch.device:
    """Where ``model`` takes its inputs: its input embeddings' device (the first device of a
    model split with ``device_map``; accelerate moves activations between the others)."""
    embeddings: Any = model.get_input_embeddings()
    weight: Tensor = embeddings.weight
    if weight.device.type == "meta":  # offloaded: accelerate's hook loads it on the main device
        hook = getattr(model.get_input_embeddings(), "_hf_hook", None)
        return torch_device(getattr(hook, "execution_device", None) or "cpu")
    return weight.device


def torch_device(spec: Any) -> torch.device:
    import torch

    return torch.device(spec if not isinstance(spec, int) else f"cuda:{spec}")


def forward_padded(
    model: Model, tokenizer: Tokenizer, ids_list: Sequence[npt.NDArray[np.int64]], points: Sequence[Point]
) -> tuple[dict[Point, Tensor], Tensor, npt.NDArray[np.int64]]:
    """Pad token id arrays (:func:`pad_batch`), run ``model`` until every one of ``points`` is
    reached, under inference mode, and return ``({point: (batch, seq, d)}, attention_mask on the
    model's input device, starts)``."""
    import torch

    ids, mask, starts = pad_batch(ids_list, tokenizer)
    device = input_device(model)
    ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
    with torch.inference_mode():
        hs = forward_to_points(model, points, **model_inputs(model, ids, mask))
    return hs, mask, starts
