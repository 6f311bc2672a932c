"""Teacher-forced substitution metrics (KL, CE, CE-recovered) with bootstrap intervals."""

from __future__ import annotations

import actbridge as ab
import numpy as np
import pytest
from conftest import tiny_model, tiny_tokenizer

torch = pytest.importorskip("torch")

TEXTS = ab.load_corpus()[:10]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer("bpe")


def test_an_identity_map_on_the_same_model_changes_nothing(tok):
    model = tiny_model("llama", vocab=len(tok), seed=1)
    eye = ab.AffineMap(np.eye(32, dtype=np.float32), np.zeros(32, np.float32))
    r = ab.evaluate_substitution((model, tok, 2), (model, tok, 2), eye, TEXTS, progress=False)
    assert r["kl"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert r["ce_substituted"]["value"] == pytest.approx(r["ce_clean"]["value"], rel=1e-6)
    assert r["ce_recovered"]["value"] == pytest.approx(1.0, abs=1e-5)
    assert r["ce_ablated"]["value"] != r["ce_clean"]["value"]  # random-init: near log(vocab) either way
    assert r["alignment_rate"]["value"] == 1.0
    assert r["tokens"]["value"] == sum(len(tok(t)["input_ids"]) - 1 for t in TEXTS)


def test_metrics_match_a_direct_computation_with_substitute(tok):
    target = tiny_model("llama", vocab=len(tok), seed=2)
    source = tiny_model("gpt2", vocab=len(tok), d=24, seed=3)
    rng = np.random.default_rng(0)
    m = ab.AffineMap(rng.standard_normal((32, 24)).astype(np.float32) * 0.2, np.zeros(32, np.float32))
    r = ab.evaluate_substitution((target, tok, 1), (source, tok, 2), m, TEXTS, batch_size=3, progress=False)
    ce_c = ce_s = kl = n = 0.0
    for text in TEXTS:
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            lc = target(input_ids=ids).logits.log_softmax(-1)[0, :-1]
            with ab.substitute(target, 1, source, 2, m):
                ls = target(input_ids=ids).logits.log_softmax(-1)[0, :-1]
        nxt = ids[0, 1:, None]
        ce_c += float(-lc.gather(-1, nxt).sum())
        ce_s += float(-ls.gather(-1, nxt).sum())
        kl += float((lc.exp() * (lc - ls)).sum())
        n += ids.shape[1] - 1
    assert r["ce_clean"]["value"] == pytest.approx(ce_c / n, rel=1e-4)
    assert r["ce_substituted"]["value"] == pytest.approx(ce_s / n, rel=1e-4)
    assert r["kl"]["value"] == pytest.approx(kl / n, rel=1e-3)
    for key in ("kl", "ce_clean", "ce_substituted", "ce_ablated", "ce_recovered"):
        lo, hi = r[key]["ci95"]
        assert lo <= r[key]["value"] <= hi, key


def test_two_tokenizers_substitute_at_aligned_positions(tok):
    uni = tiny_tokenizer("unigram", padding_side="left")
    target = tiny_model("gemma3", vocab=len(uni), d=48, seed=4)
    source = tiny_model("llama", vocab=len(tok), seed=5)
    rng = np.random.default_rng(1)
    m = ab.AffineMap(rng.standard_normal((48, 32)).astype(np.float32) * 0.1, np.zeros(48, np.float32))
    r = ab.evaluate_substitution((target, uni, 1), (source, tok, 1), m, TEXTS, batch_size=4, progress=False)
    assert 0.5 < r["alignment_rate"]["value"] < 1.0
    assert r["kl"]["value"] > 0 and np.isfinite(r["ce_recovered"]["value"])


def test_bootstrap_intervals():
    from actbridge.evaluation.metrics import bootstrap_ci

    rng = np.random.default_rng(0)
    den = rng.integers(5, 50, 400).astype(float)
    num = den * 2.0
    value, (lo, hi) = bootstrap_ci({"a": num, "b": den}, lambda s: s["a"] / s["b"])
    assert value == lo == hi == pytest.approx(2.0)
    num = rng.normal(1.0, 1.0, 400) * den
    value, (lo, hi) = bootstrap_ci({"a": num, "b": den}, lambda s: s["a"] / s["b"])
    assert lo < value < hi and 0.01 < hi - lo < 0.5


def test_several_maps_at_once_equal_one_by_one_and_share_the_target_passes(tok):
    """A {name: map} dict (and a {name: source} dict, sources with another tokenizer too)
    returns each map's metrics exactly as its own call does, with the clean and mean-ablated
    passes (and each distinct source pass) run once per batch."""
    uni = tiny_tokenizer("unigram", padding_side="left")
    target = tiny_model("llama", vocab=len(tok), seed=2)
    source = tiny_model("gpt2", vocab=len(tok), d=24, seed=3)
    other = tiny_model("gemma3", vocab=len(uni), d=48, seed=4)
    rng = np.random.default_rng(0)

    def affine(d_s):
        return ab.AffineMap(rng.standard_normal((32, d_s)).astype(np.float32) * 0.2, np.zeros(32, np.float32))

    maps = {"a": affine(24), "b": affine(24), "c": affine(48)}
    sources = {"a": (source, tok, 2), "b": (source, tok, 2), "c": (other, uni, 1)}
    calls = {"target": 0, "source": 0, "other": 0}
    for name, m in (("target", target), ("source", source), ("other", other)):
        m.register_forward_pre_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    together = ab.evaluate_substitution((target, tok, 1), sources, maps, TEXTS, batch_size=4, progress=False)
    batches = -(-len(TEXTS) // 4)
    # target: mean pass + clean + one ablated pass per source tokenizer (2) + one per map (3)
    assert calls == {"target": batches * (1 + 1 + 2 + 3), "source": batches, "other": batches}
    for name, m in maps.items():
        alone = ab.evaluate_substitution(
            (target, tok, 1), sources[name], m, TEXTS, batch_size=4, progress=False
        )
        assert together[name] == alone, name
    shared_source = ab.evaluate_substitution(
        (target, tok, 1),
        (source, tok, 2),
        {"a": maps["a"], "b": maps["b"]},
        TEXTS,
        batch_size=4,
        progress=False,
    )
    assert shared_source["a"] == together["a"] and shared_source["b"] == together["b"]
    with pytest.raises(ab.EvaluateError, match="same substitutions"):
        ab.evaluate_substitution((target, tok, 1), {"a": sources["a"]}, maps, TEXTS, progress=False)
    with pytest.raises(ValueError, match="needs a {name: map} dict"):
        ab.evaluate_substitution((target, tok, 1), sources, maps["a"], TEXTS, progress=False)
