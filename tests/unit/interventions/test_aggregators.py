"""The contrast aggregators (mean / paired / PCA / logistic), on arrays and through from_contrast.
Parity with steering-vectors and repeng themselves: tests/peers (opt-in)."""

from __future__ import annotations

import actbridge as ab
import numpy as np
import pytest
from actbridge.interventions.aggregators import AGGREGATORS, aggregate
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")


def planted(seed: int, n: int = 30, d: int = 16, strength: float = 2.0):
    """Pairs that differ along ``direction`` by a varying amount (centred PCA of the differences,
    repeng's pca_diff, sees only the variation) plus a little noise."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    base = rng.standard_normal((n, d)) * 2.0
    amount = strength * (0.5 + rng.random(n))
    pos = base + amount[:, None] * direction + 0.1 * rng.standard_normal((n, d))
    neg = base + 0.1 * rng.standard_normal((n, d))
    return pos, neg, direction


def cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("name", AGGREGATORS)
def test_every_aggregator_finds_a_planted_direction_with_the_right_sign(name):
    pos, neg, direction = planted(0)
    v = aggregate(name, pos, neg)
    assert v.dtype == np.float32 and v.shape == direction.shape
    assert cos(v, direction) > 0.95
    if name.startswith(("pca", "logistic")):
        assert np.linalg.norm(v) == pytest.approx(1.0, rel=1e-6)
    # swapping the sets flips the direction
    assert cos(aggregate(name, neg, pos), v) == pytest.approx(-1.0, abs=1e-5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 12), d=st.integers(2, 9))
def test_means_equal_numpy_and_pca_is_the_top_singular_vector(seed, n, d):
    rng = np.random.default_rng(seed)
    pos, neg = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    np.testing.assert_allclose(
        aggregate("mean_diff", pos, neg), pos.mean(0) - neg.mean(0), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        aggregate("paired_mean_diff", pos, neg), (pos - neg).mean(0), rtol=1e-5, atol=1e-6
    )
    diffs = pos - neg
    centred = diffs - diffs.mean(0)
    v = aggregate("pca_diff", pos, neg).astype(np.float64)
    s = np.linalg.svd(centred, compute_uv=False)
    # the variance along v is the largest one (the top singular value), whatever the sign
    assert np.linalg.norm(centred @ v) == pytest.approx(s[0], rel=1e-4)
    # repeng's sign rule: at least as many pairs project higher on the positive side
    assert np.mean(pos @ v > neg @ v) >= np.mean(pos @ v < neg @ v)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 10), d=st.integers(2, 30))
def test_the_logistic_direction_is_the_regularised_optimum(seed, n, d):
    """KKT: at the minimum of ½‖w‖² + Σ log(1 + exp(−y w·x)), w = Σ y σ(−y w·x) x. The
    aggregator returns w / ‖w‖; rebuild w's scale from the stationarity condition and check it."""
    rng = np.random.default_rng(seed)
    pos = rng.standard_normal((n, d)) + rng.standard_normal(d)
    neg = rng.standard_normal((n, d))
    u = aggregate("logistic", pos, neg).astype(np.float64)
    mid = (pos + neg) / 2
    x = np.concatenate([pos - mid, neg - mid])
    y = np.r_[np.ones(n), -np.ones(n)]

    def residual(scale):
        w = scale * u
        sig = 0.5 * (1 + np.tanh(-0.5 * y * (x @ w)))  # σ(−y w·x)
        return w - x.T @ (y * sig)

    # the norm t of the optimum solves u·residual(t u) = 0 (monotone in t): bisection
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid_t = (lo + hi) / 2
        lo, hi = (mid_t, hi) if u @ residual(mid_t) < 0 else (lo, mid_t)
    r = residual(lo)
    assert np.linalg.norm(r) <= 1e-5 * max(1.0, np.linalg.norm(x.T @ y))


def test_paired_aggregators_need_as_many_positive_as_negative_prompts_and_names_are_checked():
    pos, neg, _ = planted(1)
    with pytest.raises(ab.SteerError, match="30 positive and 29 negative"):
        aggregate("pca_diff", pos, neg[:-1])
    assert aggregate("mean_diff", pos, neg[:-1]).shape == (16,)  # unpaired: fine
    with pytest.raises(ab.SteerError, match="unknown aggregator 'pca'.*pca_diff"):
        aggregate("pca", pos, neg)
    with pytest.raises(ab.SteerError, match="do not vary"):
        aggregate("pca_diff", np.ones((3, 4)), np.zeros((3, 4)))
    with pytest.raises(ab.SteerError, match="non-empty"):
        aggregate("mean_diff", np.ones((0, 4)), np.zeros((3, 4)))


def test_from_contrast_aggregates_prompt_means_in_one_pass_per_batch():
    from conftest import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer("bpe", padding_side="left")
    model = tiny_model("llama", vocab=len(tok), layers=4, seed=7)  # hidden_states[-1] is normed: not block 2
    pos = ["|prod|: tell me a story about rain", "|prod|: hi", "|prod|: what is two plus two?"]
    neg = ["|dev|: tell me a story about rain", "|dev|: hi", "|dev|: what is two plus two?"]

    def prompt_means(prompts, layer):
        rows = []
        for p in prompts:
            ids = tok(p, return_tensors="pt")["input_ids"]
            with torch.inference_mode():
                h = model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1][0]
            rows.append(h[1:].double().mean(0).numpy())  # positions="all": every token but the first
        return np.stack(rows)

    for name in ("paired_mean_diff", "pca_center", "logistic"):
        vs = ab.contrast_directions(model, tok, pos, neg, layers=[0, 2], positions="all", aggregator=name)
        for layer in (0, 2):
            want = aggregate(name, prompt_means(pos, layer), prompt_means(neg, layer))
            np.testing.assert_allclose(vs[layer].vector, want, rtol=1e-4, atol=1e-5)
            assert vs[layer].info["aggregator"] == name
        one = ab.SteeringVector.from_contrast(model, tok, pos, neg, 2, positions="all", aggregator=name)
        np.testing.assert_allclose(one.vector, vs[2].vector, rtol=1e-5, atol=1e-6)
    # token-weighted (default) vs prompt-weighted means differ when prompts differ in length
    token_w = ab.SteeringVector.from_contrast(model, tok, pos, neg, 2, positions="all")
    prompt_w = ab.SteeringVector.from_contrast(
        model, tok, pos, neg, 2, positions="all", aggregator="paired_mean_diff"
    )
    assert "aggregator" not in token_w.info
    assert np.abs(token_w.vector - prompt_w.vector).max() > 1e-4
    with pytest.raises(ab.SteerError, match="3 positive and 2 negative"):
        ab.SteeringVector.from_contrast(model, tok, pos, neg[:2], 2, aggregator="pca_diff")
