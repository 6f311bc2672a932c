"""Texts to collect on: plain strings, chat conversations, JSONL files, the bundled corpus.

A document is either a string or a chat conversation (a list of ``{"role", "content"}``
messages, rendered with the tokenizer's chat template).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

from actbridge._typing import Document, Texts, Tokenizer
from actbridge.errors import TextsError


def load_corpus(kinds: Iterable[str] | None = None) -> list[str]:
    """The bundled corpus written for this project (237 texts in English with some numbers,
    code, accents, other scripts and emoji): ``kinds`` among "instruction", "paragraph",
    "short", "mixed" (default: all, in file order)."""
    raw = resources.files("actbridge").joinpath("data/corpus.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
    wanted = None if kinds is None else set(kinds)
    if wanted is not None:
        unknown = wanted - {r["kind"] for r in rows}
        if unknown:
            raise TextsError(
                f"unknown corpus kinds {sorted(unknown)}; use instruction, paragraph, short, mixed"
            )
    return [r["text"] for r in rows if wanted is None or r["kind"] in wanted]


def as_chat(instruction: str) -> list[dict[str, str]]:
    """A one-turn user conversation."""
    return [{"role": "user", "content": instruction}]


def as_prompt(tokenizer: Tokenizer, text: str) -> Document:
    """A one-turn user conversation when the tokenizer has a chat template, else ``text + "\\n"``
    (the plain format :func:`actbridge.finetuning.finetune` trains on for such tokenizers)."""
    return as_chat(text) if getattr(tokenizer, "chat_template", None) else text + "\n"


def documents(texts: Texts) -> list[Document]:
    """Normalise ``texts``: a list of strings and/or conversations, or a JSONL path whose lines
    are strings, ``{"text": ...}`` or ``{"messages": [...]}``. Empty texts are an error."""
    if isinstance(texts, (str, os.PathLike)):
        path = os.fspath(texts)
        if not os.path.isfile(path):
            raise TextsError(f"{path!r} is not a file; pass a list of strings or a JSONL file path")
        with open(path, encoding="utf-8") as f:
            items: Sequence[Any] = [json.loads(line) for line in f if line.strip()]
    else:
        items = list(texts)
    if not items:
        raise TextsError("no texts given")
    docs: list[Document] = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            item = item.get("messages", item.get("text"))
        if isinstance(item, str):
            if not item.strip():
                raise TextsError(
                    f"text {i} is empty; drop empty texts first (e.g. [t for t in texts if t.strip()])"
                )
            docs.append(item)
        elif isinstance(item, list) and item and all(isinstance(m, dict) and "content" in m for m in item):
            docs.append([dict(m) for m in item])
        else:
            raise TextsError(
                f"text {i} is a {type(item).__name__}; pass strings, chat message lists "
                '([{"role": "user", "content": ...}]), or JSONL lines with "text" or "messages"'
            )
    return docs


def render(doc: Document, tokenizer: Tokenizer, generation_prompt: bool = False) -> tuple[str, bool]:
    """The string to tokenize and whether the tokenizer should add its special tokens (chat
    templates already include them). ``generation_prompt``: end a conversation with the
    template's assistant header, ready for generation."""
    if isinstance(doc, str):
        return doc, True
    if getattr(tokenizer, "chat_template", None) is None:
        raise TextsError(
            f"{type(tokenizer).__name__} has no chat template; pass plain strings instead of messages"
        )
    text = tokenizer.apply_chat_template(doc, tokenize=False, add_generation_prompt=generation_prompt)
    return str(text), False
