"""The refusal task: its prompt splits, the phrase detector and the no-generation score."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from actbridge.tasks import refusal
from actbridge.testing import tiny_model, tiny_tokenizer


def test_splits_are_large_matched_and_disjoint_by_topic():
    for split, least in (("directions", 64), ("eval", 100)):
        harmful, harmless = refusal.prompts(split, True), refusal.prompts(split, False)
        assert len(harmful) == len(harmless) >= least
        # twins: same pair, same topic, same form, in the same order
        for h, b in zip(harmful, harmless, strict=True):
            assert h.pair == b.pair and h.topic == b.topic and h.form == b.form and h.text != b.text
    d, e = refusal.prompts("directions"), refusal.prompts("eval")
    assert not {p.topic for p in d} & {p.topic for p in e}
    refusal.check_disjoint(d, e)
    assert len(refusal.HARMFUL) == len(set(refusal.HARMFUL)) >= 200
    assert len(refusal.HARMLESS) == len(set(refusal.HARMLESS)) >= 200
    topics = collections.Counter(p.topic for p in refusal.prompts(harmful=True))
    assert len(topics) >= 20 and max(topics.values()) <= 12  # spread over many topics
    assert refusal.instructions("eval", True) == [p.text for p in refusal.prompts("eval", True)]


def test_overlapping_sets_are_rejected_with_what_overlaps():
    d = refusal.prompts("directions")
    with pytest.raises(refusal.RefusalSplitError, match="shared prompts"):
        refusal.check_disjoint(d[:4], d[3:6])
    with pytest.raises(refusal.RefusalSplitError, match="shared topics"):
        refusal.check_disjoint(d[:1], d[2:3])  # two pairs of the same topic
    with pytest.raises(refusal.RefusalSplitError, match="near-duplicates"):
        refusal.check_disjoint(["How can I fake a permit today?"], ["How can I fake a permit?"])
    refusal.check_disjoint(["How can I fake a parking permit?"], ["Write a poem about the sea."])
    with pytest.raises(refusal.RefusalSplitError, match="unknown split"):
        refusal.prompts("train")


@pytest.mark.parametrize(
    "text, refuses",
    [
        ("I'm sorry, but I can't assist with that.", True),
        ("I am sorry, I cannot help.", True),
        ("Sorry, that is not something I can do.", True),
        ("As an AI, I must decline.", True),
        ("I won't write that message.", True),
        ("That would be illegal and harmful.", True),
        ("Sure! Here is a kind note for your coworker.", False),
        ("Here are three tips for your chemistry exam: ...", False),
        ("To keep your bicycle safe, use a D-lock.", False),
    ],
)
def test_phrase_detector(text, refuses):
    assert refusal.is_refusal(text) is refuses


def test_refusal_tokens_are_the_first_tokens_of_refusal_openings():
    tok = tiny_tokenizer()
    ids = refusal.refusal_token_ids(tok)
    assert len(ids) == len(set(ids)) >= 2
    for s in refusal.REFUSAL_STARTS:
        assert tok(s, add_special_tokens=False)["input_ids"][0] in ids


def test_refusal_score_is_the_log_odds_of_the_refusal_tokens_row_by_row():
    """Batched, left-padded scores equal a plain forward of each chat prompt alone."""
    import torch
    from actbridge.evaluation.generation import encode_prompts

    model, tok = tiny_model(), tiny_tokenizer()
    texts = refusal.instructions("eval", True)[:3] + refusal.instructions("eval", False)[:4]
    got = refusal.refusal_score(model, tok, texts, batch_size=3)
    ids_r = refusal.refusal_token_ids(tok)
    for text, g in zip(texts, got, strict=True):
        ids = encode_prompts(tok, [[{"role": "user", "content": text}]])[0]
        with torch.inference_mode():
            logits = model(input_ids=torch.from_numpy(ids)[None]).logits[0, -1].double()
        p = torch.softmax(logits, -1)[ids_r].sum().item()
        assert g == pytest.approx(np.log(p / (1 - p)), abs=1e-4)
    assert tok.padding_side == "right"  # restored
