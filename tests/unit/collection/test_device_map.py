"""A model split across devices with ``load_model(device_map=...)`` (accelerate): collection,
contrast vectors, steering, ablation and generation give what the whole model gives.

On a machine without GPUs the split is over CPU and disk: accelerate keeps the offloaded blocks'
weights on the meta device and loads them on the fly, which is the code path of a model too
large for its devices (the hooks run where each block runs, inputs go to the embeddings'
device)."""

from __future__ import annotations

import actbridge as ab
import numpy as np
import pytest
from actbridge.hooks import input_device
from conftest import tiny_model, tiny_tokenizer

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

PROMPTS = ["The harbour town woke slowly.", "Rain fell", "A good cup of coffee depends on four things:"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    tok = tiny_tokenizer("bpe", padding_side="left")
    tiny_model("llama", vocab=len(tok), layers=4, seed=7).save_pretrained(root / "m")
    tok.save_pretrained(root / "m")
    return root


def placement(embeddings: str) -> dict[str, str]:
    return {
        "model.embed_tokens": embeddings,
        "model.rotary_emb": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.layers.2": "cpu",
        "model.layers.3": "disk",
        "model.norm": "cpu",
        "lm_head": "cpu",
    }


@pytest.fixture(scope="module")
def whole(saved):
    return ab.load_model(saved / "m", device="cpu", progress=False)


@pytest.fixture(scope="module", params=["cpu", "disk"], ids=["embeddings-on-cpu", "embeddings-on-disk"])
def split(saved, request):
    model, tok = ab.load_model(
        saved / "m",
        device_map=placement(request.param),
        offload_folder=saved / f"offload-{request.param}",
        progress=False,
    )
    return model, tok


def test_the_split_is_real(split):
    model, _ = split
    assert set(model.hf_device_map.values()) == {"cpu", "disk"}
    assert ab.decoder_blocks(model)[1].self_attn.q_proj.weight.device.type == "meta"  # offloaded
    assert input_device(model).type == "cpu"
    with pytest.raises(ab.InterventionError, match="offloaded"):
        ab.orthogonalize(model, np.ones(32, np.float32))


def test_collection_and_vectors_equal_the_whole_model(whole, split, tmp_path):
    rows = {}
    for name, (model, tok) in (("whole", whole), ("split", split)):
        store = ab.collect(
            model,
            tok,
            PROMPTS,
            [1, 3],
            tmp_path / name,
            where=["attn_out", "resid_post"],
            dtype="float32",
            progress=False,
        )
        rows[name] = {site: store.read(site) for site in store.sites}
    assert rows["whole"].keys() == rows["split"].keys()
    for site in rows["whole"]:
        np.testing.assert_array_equal(rows["split"][site], rows["whole"][site])
    vecs = [
        ab.SteeringVectors.from_contrast(m, t, PROMPTS[:2], PROMPTS[1:], [1, 3], aggregator="pca_diff")
        for m, t in (whole, split)
    ]
    for layer in (1, 3):
        np.testing.assert_array_equal(vecs[0][layer].vector, vecs[1][layer].vector)


def test_steering_ablation_and_generation_equal_the_whole_model(whole, split):
    v = np.random.default_rng(0).standard_normal(32).astype(np.float32) * 4
    outs = {}
    for name, (model, tok) in (("whole", whole), ("split", split)):
        enc = tok(PROMPTS, return_tensors="pt", padding=True)
        with torch.no_grad():
            with ab.steer(model, v, 1.5, layer=2, positions="last"):
                steered = model(**enc).logits
            with ab.directional_ablation(model, v):
                ablated = model(**enc).logits
        with ab.steer(model, v, 1.5, layer=2, where="mlp_out"):
            texts = ab.generate(model, tok, PROMPTS, max_new_tokens=5)
        outs[name] = (steered, ablated, texts)
    torch.testing.assert_close(outs["split"][0], outs["whole"][0], rtol=0, atol=0)
    torch.testing.assert_close(outs["split"][1], outs["whole"][1], rtol=0, atol=0)
    assert outs["split"][2] == outs["whole"][2]


def test_placement_errors_name_the_fix(saved):
    with pytest.raises(ab.ModelError, match="either device= .* or device_map="):
        ab.load_model(saved / "m", device="cpu", device_map="auto")
    with pytest.raises(ab.ModelError, match="go with device_map="):
        ab.load_model(saved / "m", offload_folder=saved / "x")
    with pytest.raises(ab.ModelError, match="could not place"):
        ab.load_model(saved / "m", device_map={"": "gpu7"}, progress=False)
