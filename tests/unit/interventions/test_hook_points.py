"""Hook points beyond block outputs (embeddings, block inputs, attention and MLP writes) for
reading, collecting, steering and ablating; full directional ablation and weight
orthogonalisation, on tiny random-init models of several architectures."""

from __future__ import annotations

import json

import actbridge as ab
import numpy as np
import pytest
from actbridge.errors import HookError, InterventionError
from actbridge.hooks import forward_to_points, hook_points, model_inputs, point_module, point_site
from conftest import tiny_model, tiny_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

PROMPTS = ["The harbour town woke slowly.", "Rain fell", "A good cup of coffee depends on four things:"]
#: Architectures with a standard sub-module layout; gemma3 normalises its writes (post-norms).
ARCHS = ["llama", "qwen2", "gemma3"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer("bpe", padding_side="right")


def models(tok):
    out = {arch: tiny_model(arch, vocab=len(tok), layers=3, seed=5) for arch in ARCHS}
    # Random init sets every norm's gain to one value, so a norm is a scalar rescale that
    # commutes with projections; random gains make hooking the wrong module show.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for model in out.values():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.add_(torch.rand(p.shape, generator=gen))
    return out


@pytest.fixture(scope="module")
def by_arch(tok):
    return models(tok)


def inputs(model, tok, prompts=PROMPTS):
    enc = tok(prompts, return_tensors="pt", padding=True)
    return model_inputs(model, enc["input_ids"], enc["attention_mask"]), enc["attention_mask"]


def every_point(model):
    return hook_points(range(len(ab.decoder_blocks(model))), ab.HOOK_POINTS)


def read_all(model, tok, prompts=PROMPTS):
    kwargs, mask = inputs(model, tok, prompts)
    with torch.no_grad():
        got = forward_to_points(model, every_point(model), **kwargs)
    return got, mask.bool()


@pytest.mark.parametrize("arch", ARCHS)
def test_hook_points_are_the_residual_stream_and_its_writes(by_arch, tok, arch):
    """resid_pre(L) = resid_post(L-1) = hidden_states[L]; resid_pre(0) = embed; resid_post(L) =
    resid_pre(L) + attn_out(L) + mlp_out(L): each point is the module that writes the stream
    (for gemma3, after its post-norms; the raw attention output would break the sum)."""
    model = by_arch[arch]
    got, mask = read_all(model, tok)
    kwargs, _ = inputs(model, tok)
    with torch.no_grad():
        hidden = model(**kwargs, output_hidden_states=True).hidden_states
    n = len(ab.decoder_blocks(model))
    torch.testing.assert_close(got[(0, "resid_pre")], got[(0, "embed")], rtol=0, atol=0)
    for layer in range(n):
        pre, post = got[(layer, "resid_pre")], got[(layer, "resid_post")]
        torch.testing.assert_close(pre, hidden[layer], rtol=0, atol=0)
        if layer + 1 < n:
            torch.testing.assert_close(post, hidden[layer + 1], rtol=0, atol=0)
        total = pre + got[(layer, "attn_out")] + got[(layer, "mlp_out")]
        torch.testing.assert_close(total[mask], post[mask], rtol=1e-5, atol=1e-4)
        assert got[(layer, "attn_out")].abs().max() > 0 and got[(layer, "mlp_out")].abs().max() > 0
    if arch == "gemma3":  # the write is the post-norm's output, not the attention module's
        module, pre_hook = point_module(model, (0, "attn_out"))
        assert module is ab.decoder_blocks(model)[0].post_attention_layernorm and not pre_hook


def test_hook_point_names_and_errors(by_arch):
    model = by_arch["llama"]
    assert hook_points([2, 0], ["resid_post", "embed", "attn_out"]) == [
        (0, "embed"),
        (0, "attn_out"),
        (0, "resid_post"),
        (2, "attn_out"),
        (2, "resid_post"),
    ]
    assert [point_site(p) for p in [(0, "embed"), (3, "resid_post"), (3, "mlp_out")]] == [
        "embed",
        "layer3",
        "layer3.mlp_out",
    ]
    with pytest.raises(HookError, match="unknown hook point 'attn'"):
        hook_points([0], "attn")
    with pytest.raises(HookError, match="twice"):
        hook_points([0], ["mlp_out", "mlp_out"])
    with pytest.raises(HookError, match="no hook points"):
        hook_points([0], [])
    block = ab.decoder_blocks(model)[0]
    mlp = block.mlp
    del block.mlp
    try:
        with pytest.raises(HookError, match="could not find the MLP of LlamaDecoderLayer"):
            point_module(model, (0, "mlp_out"))
    finally:
        block.mlp = mlp


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_collect_at_hook_points_stores_what_the_hooks_read(by_arch, tok, arch, tmp_path):
    model = by_arch[arch]
    store = ab.collect(
        model,
        tok,
        PROMPTS,
        [0, 2],
        tmp_path / "s",
        where=["embed", "attn_out", "resid_post"],
        dtype="float32",
        progress=False,
        skip_bos=False,
    )
    assert sorted(store.sites) == sorted(["embed", "layer0.attn_out", "layer0", "layer2.attn_out", "layer2"])
    assert store.metadata["collect"]["where"] == ["embed", "attn_out", "resid_post"]
    got, mask = read_all(model, tok)
    doc, pos = store.column("doc"), store.column("pos")
    rows = np.arange(len(store))
    for point in [(0, "embed"), (0, "attn_out"), (2, "attn_out"), (2, "resid_post")]:
        want = got[point][torch.as_tensor(doc), torch.as_tensor(pos)].numpy()
        np.testing.assert_array_equal(store.read(point_site(point), rows), want)
    assert len(store) == int(mask.sum())
    # resuming asks for the same points
    with pytest.raises(ab.CollectError, match="where"):
        ab.collect(model, tok, PROMPTS, [0, 2], tmp_path / "s", where="attn_out", mode="a", progress=False)


def test_collect_pair_reads_one_point_in_each_model(by_arch, tok, tmp_path):
    model = by_arch["llama"]
    store = ab.collect_pair(
        (model, tok, 1),
        (model, tok, 2),
        PROMPTS,
        tmp_path / "p",
        where="mlp_out",
        dtype="float32",
        progress=False,
    )
    got, _ = read_all(model, tok)
    doc, pos = store.column("doc"), store.column("target_pos")
    want = got[(2, "mlp_out")][torch.as_tensor(doc), torch.as_tensor(pos)].numpy()
    np.testing.assert_array_equal(store.read("target"), want)
    assert store.metadata["collect"]["where"] == "mlp_out"
    with pytest.raises(ab.CollectError, match="one hook point"):
        ab.collect_pair((model, tok, 1), (model, tok, 2), PROMPTS, tmp_path / "q", where=["mlp_out"])


def logits(model, tok, prompts=PROMPTS):
    kwargs, mask = inputs(model, tok, prompts)
    with torch.no_grad():
        return model(**kwargs).logits, mask.bool()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_steering_at_equivalent_points_gives_equal_logits(by_arch, tok, arch):
    """Adding v to block 1's input is adding it to block 0's output; adding it to the token
    embeddings is adding it to block 0's input (no position embeddings here)."""
    model = by_arch[arch]
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1)) * 3
    plain, mask = logits(model, tok)
    results = {}
    for name, (layer, where) in {
        "post0": (0, "resid_post"),
        "pre1": (1, "resid_pre"),
        "pre0": (0, "resid_pre"),
        "embed": (0, "embed"),
        "attn1": (1, "attn_out"),
    }.items():
        with ab.steer(model, v, 1.0, layer=layer, where=where):
            results[name] = logits(model, tok)[0]
    torch.testing.assert_close(results["post0"], results["pre1"], rtol=0, atol=0)
    torch.testing.assert_close(results["pre0"], results["embed"], rtol=0, atol=0)
    for out in results.values():
        assert (out[mask] - plain[mask]).abs().max() > 1e-3
    assert (results["attn1"] - results["pre1"])[mask].abs().max() > 1e-4  # a different place
    torch.testing.assert_close(logits(model, tok)[0], plain, rtol=0, atol=0)  # hooks removed


def test_vectors_read_at_a_point_are_steered_there_and_saved_with_it(by_arch, tok, tmp_path):
    model = by_arch["llama"]
    pos, neg = PROMPTS[:2], PROMPTS[1:]
    vec = ab.SteeringVector.from_contrast(model, tok, pos, neg, 1, where="attn_out")
    assert vec.where == "attn_out"
    got_pos, _ = read_all(model, tok, pos)
    got_neg, _ = read_all(model, tok, neg)

    def last(got, prompts):
        lengths = [len(tok(p)["input_ids"]) for p in prompts]
        return torch.stack([got[(1, "attn_out")][i, n - 1] for i, n in enumerate(lengths)]).double().mean(0)

    want = (last(got_pos, pos) - last(got_neg, neg)).float().numpy()
    np.testing.assert_allclose(vec.vector, want, rtol=1e-5, atol=1e-6)
    vec.save(tmp_path / "v")
    back = ab.SteeringVector.load(tmp_path / "v")
    assert back.where == "attn_out"
    with ab.steer(model, back, 2.0):
        by_default = logits(model, tok)[0]
    with ab.steer(model, back.vector, 2.0, layer=1, where="attn_out"):
        explicit = logits(model, tok)[0]
    torch.testing.assert_close(by_default, explicit, rtol=0, atol=0)
    # a vector saved before hook points loads as a block-output vector
    meta = json.loads((tmp_path / "v" / "config.json").read_text())
    assert meta["where"] == "attn_out"
    sets = ab.SteeringVectors([vec, ab.SteeringVector(vec.vector, 2)])
    with pytest.raises(InterventionError, match="different hook points"):
        ab.steer(model, sets)
    with pytest.raises(InterventionError, match="where must be one of"):
        ab.SteeringVector(vec.vector, 1, where="attn")
    with pytest.raises(InterventionError, match="one hook point"):
        ab.steer(model, vec, where=["attn_out", "mlp_out"])


@pytest.mark.parametrize("arch", ARCHS)
def test_directional_ablation_leaves_no_component_anywhere(by_arch, tok, arch):
    """With every residual write ablated, every point of the stream (block inputs and outputs)
    is orthogonal to the direction; ablating block outputs only is not (attention and MLP reads
    inside a block still see it)."""
    model = by_arch[arch]
    got, mask = read_all(model, tok)
    r = got[(1, "resid_post")][mask].mean(0)  # a direction the stream does carry
    u = r / r.norm()
    n = len(ab.decoder_blocks(model))
    assert got[(n - 1, "resid_post")][mask].matmul(u).abs().max() > 1e-2
    with ab.directional_ablation(model, r):
        ablated, _ = read_all(model, tok)
    scale = max(ablated[p][mask].norm(dim=-1).max().item() for p in ablated)
    for layer in range(n):
        for where in ("resid_pre", "resid_post"):
            assert ablated[(layer, where)][mask].matmul(u).abs().max() < 1e-5 * scale
    with ab.ablate(model, r, list(range(n))):
        outputs_only = logits(model, tok)[0]
    with ab.directional_ablation(model, r):
        everywhere = logits(model, tok)[0]
    assert (outputs_only - everywhere)[mask].abs().max() > 1e-4
    with pytest.raises(InterventionError, match="one vector"):
        ab.directional_ablation(model, ab.SteeringVectors([ab.SteeringVector(r.numpy(), 0)]))


def test_ablation_at_several_points_of_chosen_blocks(by_arch, tok):
    model = by_arch["qwen2"]
    got, mask = read_all(model, tok)
    r = got[(0, "mlp_out")][mask].mean(0)
    u = r / r.norm()
    with ab.ablate(model, r, [0, 2], where=["attn_out", "mlp_out"]):
        ablated, _ = read_all(model, tok)
    for layer in (0, 2):
        for where in ("attn_out", "mlp_out"):
            assert ablated[(layer, where)][mask].matmul(u).abs().max() < 1e-4
    assert ablated[(1, "mlp_out")][mask].matmul(u).abs().max() > 1e-3  # block 1 untouched


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), tied=st.booleans(), arch=st.sampled_from(["llama", "qwen2"]))
def test_orthogonalized_weights_equal_the_hooked_ablation(tok, seed, tied, arch):
    model = tiny_model(arch, vocab=len(tok), layers=3, seed=seed % 1000, tie_word_embeddings=tied)
    if arch == "qwen2":  # give the projections biases to check those are edited too
        with torch.no_grad():
            for block in ab.decoder_blocks(model):
                block.self_attn.o_proj.bias = torch.nn.Parameter(torch.randn(model.config.hidden_size))
    direction = np.random.default_rng(seed).standard_normal(model.config.hidden_size).astype(np.float32)
    head_before = model.get_output_embeddings().weight.detach().clone()
    with ab.directional_ablation(model, direction):
        hooked, mask = logits(model, tok)
    plain, _ = logits(model, tok)
    assert ab.orthogonalize(model, direction) is model
    edited, _ = logits(model, tok)
    scale = hooked[mask].abs().max()
    assert (edited - hooked)[mask].abs().max() < 1e-5 * scale
    assert (plain - hooked)[mask].abs().max() > 1e-3 * scale
    torch.testing.assert_close(model.get_output_embeddings().weight, head_before, rtol=0, atol=0)
    u = torch.as_tensor(direction / np.linalg.norm(direction))
    assert model.get_input_embeddings().weight.matmul(u).abs().max() < 1e-5


@pytest.mark.parametrize("tied", [True, False])
def test_orthogonalized_model_saves_and_loads_as_it_computes(tok, tmp_path, tied):
    import transformers

    model = tiny_model("llama", vocab=len(tok), layers=2, seed=2, tie_word_embeddings=tied)
    direction = np.random.default_rng(0).standard_normal(model.config.hidden_size).astype(np.float32)
    with ab.directional_ablation(model, direction):
        hooked, mask = logits(model, tok)
    ab.orthogonalize(model, direction)
    model.save_pretrained(tmp_path / "m")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert back.config.tie_word_embeddings is False
    assert back.get_output_embeddings().weight.data_ptr() != back.get_input_embeddings().weight.data_ptr()
    loaded, _ = logits(back, tok)
    torch.testing.assert_close(loaded, logits(model, tok)[0], rtol=0, atol=0)
    assert (loaded - hooked)[mask].abs().max() < 1e-5 * hooked[mask].abs().max()


def test_orthogonalize_refuses_what_it_cannot_edit_exactly(by_arch, tok):
    d = 32
    before = {k: v.clone() for k, v in by_arch["gemma3"].state_dict().items()}
    with pytest.raises(InterventionError, match="normalises its attention and MLP outputs"):
        ab.orthogonalize(by_arch["gemma3"], np.ones(d, np.float32))
    for k, v in by_arch["gemma3"].state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)  # nothing changed
    gpt2 = tiny_model("gpt2", vocab=len(tok), layers=2)
    with pytest.raises(InterventionError, match="position embeddings"):
        ab.orthogonalize(gpt2, np.ones(d, np.float32))
    with pytest.raises(InterventionError, match="zero"):
        ab.orthogonalize(by_arch["llama"], np.zeros(d, np.float32))
    with pytest.raises(InterventionError, match="dimensions"):
        ab.orthogonalize(by_arch["llama"], np.ones(d + 1, np.float32))
