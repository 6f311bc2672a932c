"""Collection from tiny random-init models: rows, columns, padding, hooks, pairs, bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import actbridge as ab
import numpy as np
import pytest
from conftest import ARCHS, tiny_model, tiny_tokenizer

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bpe():
    return tiny_tokenizer("bpe")


@pytest.fixture(scope="module")
def unigram():
    return tiny_tokenizer("unigram")


def texts(n=11):
    corpus = ab.load_corpus()
    return [corpus[i * 7 % len(corpus)] for i in range(n)]  # varied lengths and kinds


def reference(model, tok, text, add_special=True):
    """hidden_states of one unpadded forward pass, ``(layers + 1, seq, d)``, and the ids."""
    ids = tok(text, add_special_tokens=add_special, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    return torch.stack(hs)[:, 0].numpy(), ids[0].numpy()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("side", ["right", "left"])
def test_rows_equal_hidden_states_at_the_same_doc_and_pos(tmp_path, arch, side):
    tok = tiny_tokenizer("bpe", padding_side=side)
    model = tiny_model(arch, vocab=len(tok))
    docs = texts()
    store = ab.collect(
        model, tok, docs, [0, -2], tmp_path / "s", batch_size=4, dtype="float32", progress=False
    )
    assert store.sites == {"layer0": 32, "layer2": 32}
    assert store.columns == ["token_id", "doc", "pos"]
    doc, pos, token = store.column("doc"), store.column("pos"), store.column("token_id")
    for d, text in enumerate(docs):
        hs, ids = reference(model, tok, text)
        rows = np.flatnonzero(doc == d)
        # every position but the first (BOS), in order; padding never stored
        np.testing.assert_array_equal(pos[rows], np.arange(1, len(ids)))
        np.testing.assert_array_equal(token[rows], ids[1:])
        for layer in (0, 2):
            np.testing.assert_allclose(
                store.read(f"layer{layer}", rows), hs[layer + 1][1:], rtol=1e-4, atol=1e-4
            )
    meta = store.metadata["collect"]
    assert meta["layers"] == [0, 2] and meta["skip_bos"] is True and meta["texts"] == len(docs)


def test_bf16_rows_are_the_rounded_hidden_states_and_skip_bos_can_be_off(tmp_path, bpe):
    model = tiny_model("llama", vocab=len(bpe))
    docs = texts(5)
    store = ab.collect(model, bpe, docs, 1, tmp_path / "s", skip_bos=False, progress=False)
    assert store.dtypes == {"layer1": "bfloat16"}
    from conftest import bf16_round

    for d, text in enumerate(docs):
        hs, ids = reference(model, bpe, text)
        rows = np.flatnonzero(store.column("doc") == d)
        np.testing.assert_array_equal(store.column("pos", rows), np.arange(len(ids)))
        got, want = store.read("layer1", rows), bf16_round(hs[2])
        # batching changes the last float32 bit now and then, which may flip one bf16 rounding
        np.testing.assert_allclose(got, want, rtol=2**-7, atol=1e-6)
        assert (got == want).mean() > 0.99


def test_the_forward_pass_stops_after_the_last_hooked_block(tmp_path, bpe):
    model = tiny_model("llama", vocab=len(bpe), layers=6)
    calls = {"block": [], "head": 0}
    for i, block in enumerate(model.model.layers):
        block.register_forward_hook(lambda m, a, o, i=i: calls["block"].append(i))
    model.lm_head.register_forward_hook(lambda m, a, o: calls.__setitem__("head", calls["head"] + 1))
    ab.collect(model, bpe, texts(3), [1, 3], tmp_path / "s", progress=False)
    assert set(calls["block"]) == {0, 1, 2, 3} and calls["head"] == 0
    # our hooks are gone afterwards: a normal forward runs every block and the head
    calls["block"].clear()
    model(input_ids=torch.tensor([[5, 6, 7]]))
    assert calls["block"] == list(range(6)) and calls["head"] == 1


def test_hooks_are_removed_when_the_forward_pass_fails(tmp_path, bpe):
    model = tiny_model("llama", vocab=len(bpe))
    blocks = ab.decoder_blocks(model)

    def boom(module, args):
        raise RuntimeError("boom")

    handle = blocks[1].register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        ab.collect(model, bpe, texts(3), [2], tmp_path / "s", progress=False)
    handle.remove()
    assert all(not b._forward_hooks for b in blocks)


def test_chat_messages_and_jsonl_files(tmp_path, bpe):
    model = tiny_model("qwen2", vocab=len(bpe))
    chat = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    path = tmp_path / "texts.jsonl"
    path.write_text(
        "\n".join(json.dumps(x) for x in ["plain line", {"text": "a text field"}, {"messages": chat}]) + "\n"
    )
    store = ab.collect(model, bpe, path, [1], tmp_path / "s", dtype="float32", progress=False)
    rendered = bpe.apply_chat_template(chat, tokenize=False)
    hs, ids = reference(model, bpe, rendered, add_special=False)
    rows = np.flatnonzero(store.column("doc") == 2)
    np.testing.assert_array_equal(store.column("token_id", rows), ids[1:])
    np.testing.assert_allclose(store.read("layer1", rows), hs[2][1:], rtol=1e-4, atol=1e-4)
    assert sorted(set(store.column("doc"))) == [0, 1, 2]


def test_pairs_with_one_tokenizer_are_one_to_one(tmp_path, bpe):
    a, b = tiny_model("llama", vocab=len(bpe), seed=1), tiny_model("gpt2", vocab=len(bpe), seed=2)
    docs = texts(6)
    store = ab.collect_pair(
        (a, bpe, 1), (b, bpe, 2), docs, tmp_path / "p", batch_size=4, dtype="float32", progress=False
    )
    assert store.sites == {"source": 32, "target": 32}
    assert store.metadata["alignment_rate"] == 1.0
    np.testing.assert_array_equal(store.column("source_pos"), store.column("target_pos"))
    for d, text in enumerate(docs):
        (hs_a, ids), (hs_b, _) = reference(a, bpe, text), reference(b, bpe, text)
        rows = np.flatnonzero(store.column("doc") == d)
        np.testing.assert_array_equal(store.column("target_token_id", rows), ids[1:])
        np.testing.assert_allclose(store.read("source", rows), hs_a[2][1:], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(store.read("target", rows), hs_b[3][1:], rtol=1e-4, atol=1e-4)


def test_pairs_across_tokenizers_align_by_character_offsets(tmp_path, bpe):
    uni = tiny_tokenizer("unigram", padding_side="left")
    a = tiny_model("llama", vocab=len(bpe), seed=1)
    b = tiny_model("gemma3", vocab=len(uni), seed=2, d=48)
    docs = texts(9) + ["naïve café: 3.14 🙂🙂!", "  two  spaces\n\nand a blank line"]
    store = ab.collect_pair(
        (a, bpe, 2), (b, uni, 1), docs, tmp_path / "p", batch_size=3, dtype="float32", progress=False
    )
    assert store.sites == {"source": 32, "target": 48}
    doc, sp, tp = store.column("doc"), store.column("source_pos"), store.column("target_pos")
    paired = considered = 0
    for d, text in enumerate(docs):
        es = bpe(text, return_offsets_mapping=True)
        et = uni(text, return_offsets_mapping=True)
        so, to = np.asarray(es["offset_mapping"]), np.asarray(et["offset_mapping"])
        rows = np.flatnonzero(doc == d)
        # skip_bos drops the BPE side's "<s>" but keeps the unigram side's first token: that
        # tokenizer adds no BOS, so position 0 is the text's first word (it was dropped before)
        assert es["input_ids"][0] == bpe.bos_token_id and et["input_ids"][0] != uni.bos_token_id
        want_s, want_t = ab.align_offsets(
            so, to, source_allowed=np.arange(len(so)) >= 1, target_allowed=np.arange(len(to)) >= 0
        )
        np.testing.assert_array_equal(sp[rows], want_s)
        np.testing.assert_array_equal(tp[rows], want_t)
        np.testing.assert_array_equal(so[sp[rows], 1], to[tp[rows], 1])  # same end character
        np.testing.assert_array_equal(
            store.column("source_token_id", rows), np.asarray(es["input_ids"])[sp[rows]]
        )
        np.testing.assert_array_equal(
            store.column("target_token_id", rows), np.asarray(et["input_ids"])[tp[rows]]
        )
        hs_a, _ = reference(a, bpe, text)
        hs_b, _ = reference(b, uni, text)
        np.testing.assert_allclose(store.read("source", rows), hs_a[3][sp[rows]], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(store.read("target", rows), hs_b[2][tp[rows]], rtol=1e-4, atol=1e-4)
        paired += len(rows)
        considered += int((to[:, 1] > to[:, 0]).sum())
    assert store.metadata["alignment"] == {"paired": paired, "target_tokens": considered}
    assert store.metadata["alignment_rate"] == pytest.approx(paired / considered)
    assert 0.5 < paired / considered < 1.0


def test_bad_inputs_get_typed_errors_that_say_what_to_do(tmp_path, bpe):
    model = tiny_model("llama", vocab=len(bpe))
    with pytest.raises(ab.TextsError, match="no texts"):
        ab.collect(model, bpe, [], [1], tmp_path / "a", progress=False)
    with pytest.raises(ab.TextsError, match="text 1 is empty"):
        ab.collect(model, bpe, ["fine", "  "], [1], tmp_path / "b", progress=False)
    with pytest.raises(ab.TextsError, match="not a file"):
        ab.collect(model, bpe, str(tmp_path / "missing.jsonl"), [1], tmp_path / "c", progress=False)
    with pytest.raises(ab.HookError, match=r"out of range: LlamaForCausalLM has 4 decoder blocks \(0..3\)"):
        ab.collect(model, bpe, ["x y"], [4], tmp_path / "d", progress=False)
    with pytest.raises(ab.HookError, match="same block twice"):
        ab.collect(model, bpe, ["x y"], [1, -3], tmp_path / "e", progress=False)

    class NoBlocks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mixed = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.ReLU()])

    with pytest.raises(ab.HookError, match=r"module lists found: mixed \(2 modules\)"):
        ab.decoder_blocks(NoBlocks())
    with pytest.raises(ab.CollectError, match="batch_size"):
        ab.collect(model, bpe, ["x y"], [1], tmp_path / "f", batch_size=0, progress=False)
    with pytest.raises(ab.CollectError, match="mode"):
        ab.collect(model, bpe, ["x y"], [1], tmp_path / "g", mode="w", progress=False)
    with pytest.warns(ab.CollectWarning, match="1 text"):
        s = ab.collect(
            model,
            bpe,
            ["short", "a much longer text " * 10],
            [1],
            tmp_path / "h",
            max_length=8,
            progress=False,
        )
    assert s.column("pos").max() == 7
    assert s.metadata["collect"]["max_length"] == 8

    class SlowTokenizer:
        is_fast = False

        def get_vocab(self):
            return {"a": 0}

    with pytest.raises(ab.CollectError, match="use_fast=True"):
        ab.collect_pair((model, SlowTokenizer(), 1), (model, bpe, 1), ["x"], tmp_path / "i", progress=False)
    uni = tiny_tokenizer("unigram")
    chat = [[{"role": "user", "content": "hi"}]]
    with pytest.raises(ab.CollectError, match="plain strings"):
        ab.collect_pair((model, bpe, 1), (model, uni, 1), chat, tmp_path / "j", progress=False)
    # resuming a store collected with other settings
    ab.collect(model, bpe, ["x y z"], [1], tmp_path / "k", progress=False)
    with pytest.raises(ab.CollectError, match=r"collected with layers=\[1\], this run asks for \[2\]"):
        ab.collect(model, bpe, ["x y z"], [2], tmp_path / "k", mode="a", progress=False)
    with pytest.raises(ab.CollectError, match="skip_bos=True, this run asks for False"):
        ab.collect(model, bpe, ["x y z"], [1], tmp_path / "k", mode="a", skip_bos=False, progress=False)
    with pytest.raises(ab.StoreError):
        ab.collect(model, bpe, ["x y z"], [1], tmp_path / "k", progress=False)  # mode="x" on a store


def test_mode_a_after_a_finished_run_adds_nothing_and_continues_new_texts(tmp_path, bpe):
    model = tiny_model("llama", vocab=len(bpe))
    docs = texts(8)
    whole = ab.collect(model, bpe, docs, [1], tmp_path / "whole", dtype="float32", progress=False)
    part = ab.collect(model, bpe, docs[:5], [1], tmp_path / "part", dtype="float32", progress=False)
    again = ab.collect(
        model, bpe, docs[:5], [1], tmp_path / "part", dtype="float32", mode="a", progress=False
    )
    assert len(again) == len(part)
    more = ab.collect(model, bpe, docs, [1], tmp_path / "part", dtype="float32", mode="a", progress=False)
    for col in ("doc", "pos", "token_id"):
        np.testing.assert_array_equal(more.column(col), whole.column(col))
    np.testing.assert_allclose(more.read("layer1"), whole.read("layer1"), rtol=1e-4, atol=1e-4)


COLLECTOR = """
import sys
import actbridge as ab
from actbridge.testing import tiny_model, tiny_tokenizer
tok = tiny_tokenizer("bpe")
model = tiny_model("llama", vocab=len(tok), layers=3, d=64)
docs = ab.load_corpus() * 3
ab.collect(model, tok, docs, [1], sys.argv[1], batch_size=2, dtype="float32", progress=False,
           mode=sys.argv[2], shard_bytes=64 * 1024)
"""


def _committed(path: Path) -> int:
    try:
        return json.loads((path / "manifest.json").read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.crash
def test_a_killed_collection_resumed_with_mode_a_equals_an_uninterrupted_one(tmp_path):
    script = tmp_path / "collector.py"
    script.write_text(COLLECTOR)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(killed), "x"])
    deadline = time.monotonic() + 120
    while _committed(killed) < 2000 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the collector finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _committed(killed)
    assert before > 0
    subprocess.run([sys.executable, str(script), str(killed), "a"], check=True)
    subprocess.run([sys.executable, str(script), str(tmp_path / "whole"), "x"], check=True)
    a, b = ab.ActivationStore(killed), ab.ActivationStore(tmp_path / "whole")
    assert len(a) == len(b) > before
    for col in ("doc", "pos", "token_id"):
        np.testing.assert_array_equal(a.column(col), b.column(col))
    np.testing.assert_allclose(a.read("layer1"), b.read("layer1"), rtol=1e-4, atol=1e-4)


RANK = """
import sys
import torch.distributed as dist
import actbridge as ab
from actbridge.testing import tiny_model, tiny_tokenizer
dist.init_process_group("gloo")
tok = tiny_tokenizer("bpe")
model = tiny_model("llama", vocab=len(tok))
store = ab.collect(model, tok, ab.load_corpus()[:9], [1, 2], sys.argv[1], batch_size=2, dtype="float32",
                   progress=False)
assert len(store.parts) == 2  # every rank sees both parts after the barrier
dist.destroy_process_group()
"""


def test_ranks_collect_their_share_into_parts_that_open_as_one_store(tmp_path, bpe):
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    procs = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path / "ranks")], env={**env, "RANK": str(r)})
        for r in (0, 1)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    parts = ab.ActivationStore(tmp_path / "ranks")
    assert [Path(p).name for p in parts.parts] == ["part-0", "part-1"]
    assert parts.metadata["collect"]["world_size"] == 2
    model = tiny_model("llama", vocab=len(bpe))
    single = ab.collect(
        model,
        bpe,
        ab.load_corpus()[:9],
        [1, 2],
        tmp_path / "one",
        batch_size=2,
        dtype="float32",
        progress=False,
    )
    docs = parts.column("doc")
    assert docs[0] == 0 and docs[-1] == 8 and (np.diff(docs) >= 0).all()
    for col in ("doc", "pos", "token_id"):
        np.testing.assert_array_equal(parts.column(col), single.column(col))
    np.testing.assert_allclose(parts.read("layer2"), single.read("layer2"), rtol=1e-4, atol=1e-4)


def test_a_bfloat16_model_hands_its_rows_over_as_bfloat16(tmp_path, bpe):
    model = tiny_model("qwen3", vocab=len(bpe)).to(torch.bfloat16)
    docs = texts(4)
    store = ab.collect(model, bpe, docs, [2], tmp_path / "s", batch_size=2, progress=False)
    for d, text in enumerate(docs):
        ids = bpe(text, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            want = model(input_ids=ids, output_hidden_states=True).hidden_states[3][0, 1:].float().numpy()
        rows = np.flatnonzero(store.column("doc") == d)
        # bf16 forward passes of padded and unpadded batches differ by a few bf16 ulps
        np.testing.assert_allclose(store.read("layer2", rows), want, atol=0.05 * np.abs(want).max(), rtol=0)


def test_skip_bos_drops_only_a_real_bos_and_skip_first_drops_position_zero(tmp_path, bpe):
    """Bug: skip_bos=True dropped position 0 of every text, BOS or not; with a tokenizer that
    adds no BOS (SmolLM2, Qwen, the unigram one here) the text's first real token was lost and
    row counts differed from every peer's. Now skip_bos drops a BOS token only; dropping the first
    position whatever it is (the attention sink) is skip_first, and the store records both."""
    uni = tiny_tokenizer("unigram")
    docs = texts(4)
    for tok, has_bos in ((bpe, True), (uni, False)):
        model = tiny_model("llama", vocab=len(tok), seed=4)
        runs = {
            "bos": ab.collect(
                model, tok, docs, 1, tmp_path / f"{has_bos}-bos", dtype="float32", progress=False
            ),
            "first": ab.collect(
                model, tok, docs, 1, tmp_path / f"{has_bos}-first", skip_first=True, progress=False
            ),
            "none": ab.collect(
                model, tok, docs, 1, tmp_path / f"{has_bos}-none", skip_bos=False, progress=False
            ),
        }
        for d, text in enumerate(docs):
            _, ids = reference(model, tok, text)
            assert (ids[0] == tok.bos_token_id) == has_bos
            wanted = {"bos": 1 if has_bos else 0, "first": 1, "none": 0}
            for how, store in runs.items():
                rows = np.flatnonzero(store.column("doc") == d)
                np.testing.assert_array_equal(store.column("pos", rows), np.arange(wanted[how], len(ids)))
                np.testing.assert_array_equal(store.column("token_id", rows), ids[wanted[how] :])
        meta = {
            how: (s.metadata["collect"]["skip_bos"], s.metadata["collect"]["skip_first"])
            for how, s in runs.items()
        }
        assert meta == {"bos": (True, False), "first": (True, True), "none": (False, False)}
    # a chat conversation that the template starts with "<s>" (the BPE tokenizer's BOS)
    model = tiny_model("llama", vocab=len(bpe), seed=4)
    chat = [[{"role": "user", "content": "hi there"}]]
    store = ab.collect(model, bpe, chat, 1, tmp_path / "chat", progress=False)
    assert store.column("pos")[0] == 1 and bpe.bos_token_id not in store.column("token_id").tolist()[:1]
    # resuming needs the same choice
    with pytest.raises(ab.CollectError, match="skip_first=False, this run asks for True"):
        ab.collect(model, bpe, docs, 1, tmp_path / "True-bos", mode="a", skip_first=True, progress=False)


def test_a_store_from_before_skip_first_resumes_only_with_the_old_meaning(tmp_path, bpe):
    """Stores written before skip_first existed dropped position 0 of every text under
    skip_bos=True: resuming one asks for skip_first=True, with a message that says so."""
    model = tiny_model("llama", vocab=len(bpe), seed=4)
    path = tmp_path / "old"
    ab.collect(model, bpe, texts(2), 1, path, progress=False)
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["metadata"]["collect"]["skip_first"]  # as an older actbridge wrote it
    del manifest["checksum"]  # it covers the metadata; manifests from before checksums load
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ab.CollectError, match="skip_first=True, this run asks for False"):
        ab.collect(model, bpe, texts(4), 1, path, mode="a", progress=False)
    store = ab.collect(model, bpe, texts(4), 1, path, mode="a", skip_first=True, progress=False)
    assert sorted(set(store.column("doc").tolist())) == [0, 1, 2, 3] and store.column("pos").min() == 1
