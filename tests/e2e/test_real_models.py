"""The two embedded real models (installed offline from PyPI): collection and alignment.

Marked ``real``; they run by default (and in CI). The first run dequantises the GGUF files into
the cache (about a minute); later runs load the cached safetensors in about a second.
"""

from __future__ import annotations

import re

import actbridge as ab
import numpy as np
import pytest
from conftest import assert_rows_equal_hidden_states

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.real

HARD = [
    "naïve café: 3.14 🙂🙂! Ünïcödé straße, 東京 and 2024-11-22.",
    "  two  spaces,\ttabs\tand\n\nblank lines  ",
    "Prices: $1,249.99 (8.25%) — €38.50; x=[3, 1, 4]; print(f'{x!r}')",
]


@pytest.fixture(scope="module")
def smol():
    return ab.load_model("smollm2-135m-instruct", device="cpu")


@pytest.fixture(scope="module")
def gemma():
    return ab.load_model("gemma-3-270m", device="cpu")


def test_embedded_models_load_from_the_cache_and_generate(smol, gemma, tmp_path):
    for (model, tok), width, blocks in ((smol, 576, 30), (gemma, 640, 18)):
        assert model.get_input_embeddings().embedding_dim == width
        assert len(ab.decoder_blocks(model)) == blocks
        assert (ab.models.cache_dir() / "models" / model.actbridge_name / "model.safetensors").is_file()
        assert tok.is_fast
    model, tok = smol
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = tok(chat, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])
    # the cached weights are plain floats: a fine-tuned copy saves and reloads like any model
    model.save_pretrained(tmp_path / "copy")
    tok.save_pretrained(tmp_path / "copy")
    again, _ = ab.load_model(tmp_path / "copy", device="cpu")
    assert again.config.to_dict().get("quantization_config") is None


@pytest.mark.parametrize("side", ["right", "left"])
def test_smollm2_rows_equal_hidden_states(tmp_path, smol, side):
    model, tok = smol
    old = tok.padding_side
    tok.padding_side = side
    try:
        docs = ab.load_corpus()[::20] + HARD
        store = ab.collect(
            model, tok, docs, [6, 13], tmp_path / "s", batch_size=5, dtype="float32", progress=False
        )
    finally:
        tok.padding_side = old
    assert tok("Hello there")["input_ids"][0] != tok.bos_token_id  # SmolLM2 adds no BOS to text
    for pos, n_tokens in assert_rows_equal_hidden_states(store, model, tok, docs, [6, 13]):
        np.testing.assert_array_equal(pos, np.arange(0, n_tokens))  # so skip_bos keeps every token


def word_ends(text: str) -> set[int]:
    """Character positions where a run of non-space characters ends: a token boundary for
    both byte-level BPE (SmolLM2) and SentencePiece (Gemma) tokenizers."""
    return {m.end() for m in re.finditer(r"\S+", text)}


def test_smollm2_to_gemma_pairs_align_by_characters(tmp_path, smol, gemma):
    (m_s, t_s), (m_t, t_t) = smol, gemma
    docs = ab.load_corpus()[::8] + HARD
    store = ab.collect_pair((m_s, t_s, 13), (m_t, t_t, 9), docs, tmp_path / "p", batch_size=6, progress=False)
    rate = store.metadata["alignment_rate"]
    assert 0.85 < rate < 1.0
    doc, sp, tp = store.column("doc"), store.column("source_pos"), store.column("target_pos")
    for d, text in enumerate(docs):
        so = np.asarray(t_s(text, return_offsets_mapping=True)["offset_mapping"])
        to = np.asarray(t_t(text, return_offsets_mapping=True)["offset_mapping"])
        rows = np.flatnonzero(doc == d)
        ends = so[sp[rows], 1]
        np.testing.assert_array_equal(ends, to[tp[rows], 1])  # every pair ends at one character
        # every word end is paired, SmolLM2's first token included (it adds no BOS, so skip_bos
        # keeps position 0); Gemma's position 0 is its <bos>, which is skipped
        assert word_ends(text) <= set(ends.tolist())
        assert (tp[rows] >= 1).all()
    assert (sp == 0).sum() >= len(docs) // 2  # SmolLM2's first tokens are stored (they were dropped)
    # the rows are the two models' hidden states at the paired positions (bf16)
    for d in (0, len(docs) - 3):
        text, rows = docs[d], np.flatnonzero(doc == d)
        with torch.inference_mode():
            hs_s = m_s(**t_s(text, return_tensors="pt"), output_hidden_states=True).hidden_states[14][0]
            hs_t = m_t(**t_t(text, return_tensors="pt"), output_hidden_states=True).hidden_states[10][0]
        for site, hs, pos in (("source", hs_s, sp[rows]), ("target", hs_t, tp[rows])):
            want = hs[pos].float().numpy()
            np.testing.assert_allclose(store.read(site, rows), want, atol=1e-2 * np.abs(want).max(), rtol=0)


def test_a_sweep_in_one_batched_pass_generates_what_cell_by_cell_runs_do(smol):
    """SmolLM2: 2 vectors x 2 alphas (+ unsteered) over 8 prompts, once cell by cell (one
    `with ab.steer` block and one generate() per cell) and once as one batched sweep: greedy
    completions agree row for row (other batch shapes could flip a token only at a tie in the
    logits; none was seen in 768 rows of benches/bench_sweep.py)."""
    model, tok = smol
    pos = ["I love this, it is wonderful.", "What a delightful, happy day."]
    neg = ["I hate this, it is awful.", "What a miserable, gloomy day."]
    v = ab.SteeringVector.from_contrast(model, tok, pos, neg, 12, positions="all")
    noise = v.random_like(np.random.default_rng(0))
    prompts = [" ".join(t.split()[:6]) for t in ab.load_corpus()[:8]]
    conds = [ab.rowwise.UNSTEERED] + ab.rowwise.grid({"v": v, "noise": noise}, [-6.0, 6.0])
    cells = []
    for c in conds:
        if c.steers:
            with ab.steer(model, c.vector, alpha=c.alpha, positions=c.positions):
                cells.append(ab.evaluation.generation.generate(model, tok, prompts, 12))
        else:
            cells.append(ab.evaluation.generation.generate(model, tok, prompts, 12))
    swept = ab.generate_conditions(model, tok, conds, prompts, 12)
    same = sum(a == b for cell, row in zip(cells, swept, strict=True) for a, b in zip(cell, row, strict=True))
    assert same >= 0.99 * len(conds) * len(prompts), same
    assert swept[1] != swept[0]  # the vector does steer


@pytest.mark.parametrize("which", ["smol", "gemma"])
def test_hook_points_sum_to_the_residual_stream(request, which):
    """On the real models: each block's output is its input plus its attention and MLP writes
    (Gemma 3's writes are its post-norms' outputs), and block 0's input is the embeddings."""
    from actbridge.hooks import forward_to_points, hook_points, model_inputs

    model, tok = request.getfixturevalue(which)
    enc = tok(HARD, return_tensors="pt", padding=True)
    n = len(ab.decoder_blocks(model))
    points = hook_points(range(n), ab.HOOK_POINTS)
    with torch.no_grad():
        got = forward_to_points(model, points, **model_inputs(model, enc["input_ids"], enc["attention_mask"]))
    mask = enc["attention_mask"].bool()
    torch.testing.assert_close(got[(0, "resid_pre")], got[(0, "embed")], rtol=0, atol=0)
    for layer in range(n):
        post = got[(layer, "resid_post")][mask]
        total = (got[(layer, "resid_pre")] + got[(layer, "attn_out")] + got[(layer, "mlp_out")])[mask]
        assert (total - post).abs().max() <= 1e-5 * post.abs().max()


def test_smollm2_orthogonalized_weights_equal_the_hooked_ablation(tmp_path):
    """SmolLM2 ties its embeddings: orthogonalising unties them, and the edited model (saved and
    reloaded) computes what directional ablation computes with hooks."""
    model, tok = ab.load_model("smollm2-135m-instruct", device="cpu")  # a fresh copy: edited in place
    prompts = [[{"role": "user", "content": "How do I pick a lock?"}], [{"role": "user", "content": "Hi"}]]
    direction = ab.SteeringVector.from_contrast(model, tok, prompts[:1], prompts[1:], 12)
    enc = tok(HARD, return_tensors="pt", padding=True)
    mask = enc["attention_mask"].bool()
    with torch.no_grad():
        plain = model(**enc).logits[mask]
        with ab.directional_ablation(model, direction):
            hooked = model(**enc).logits[mask]
        ab.orthogonalize(model, direction)
        model.save_pretrained(tmp_path / "ortho")
        tok.save_pretrained(tmp_path / "ortho")
        back, _ = ab.load_model(tmp_path / "ortho", device="cpu")
        edited = back(**enc).logits[mask]
    scale = hooked.abs().max()
    assert (edited - hooked).abs().max() < 1e-4 * scale
    assert (plain - hooked).abs().max() > 1e-2 * scale
    assert back.config.tie_word_embeddings is False
