"""llama.cpp control vectors: written in llama.cpp's layout (read back with the gguf package's
own reader), loaded back exactly, and bad files or vectors rejected with typed errors."""

from __future__ import annotations

import actbridge as ab
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")


def vectors(d=16, layers=(3, 7)):
    rng = np.random.default_rng(1)
    return [ab.SteeringVector(rng.standard_normal(d).astype(np.float32), layer, "qwen2") for layer in layers]


def test_control_vector_layout_and_round_trip(tmp_path):
    vs = vectors()
    path = ab.save_control_vector(vs[::-1], tmp_path / "cv.gguf")
    reader = gguf.GGUFReader(str(path))
    arch = reader.get_field("general.architecture")
    assert bytes(arch.parts[arch.data[0]]).decode() == "controlvector"
    count = reader.get_field("controlvector.layer_count")
    assert int(count.parts[count.data[0]][0]) == 2
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert list(tensors) == ["direction.3", "direction.7"]  # block N's output is direction.N
    for v in vs:
        np.testing.assert_array_equal(tensors[f"direction.{v.layer}"], v.vector)
    back = ab.load_control_vector(path)
    assert list(back) == [3, 7]
    for v in vs:
        np.testing.assert_array_equal(back[v.layer].vector, v.vector)
        assert back[v.layer].layer == v.layer and back[v.layer].model == "qwen2"
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_vectors_and_files(tmp_path):
    with pytest.raises(ab.InterventionError, match="blocks 1 and up"):
        ab.save_control_vector(vectors(layers=(0,)), tmp_path / "a.gguf")
    with pytest.raises(ab.InterventionError, match="blocks 1 and up"):
        ab.save_control_vector(vectors(layers=(-1,)), tmp_path / "a.gguf")
    with pytest.raises(ab.InterventionError, match="repeat"):
        ab.save_control_vector(vectors(layers=(2, 2)), tmp_path / "a.gguf")
    with pytest.raises(ab.InterventionError, match="different widths"):
        ab.save_control_vector([*vectors(8, (1,)), *vectors(16, (2,))], tmp_path / "a.gguf")
    with pytest.raises(ab.InterventionError, match="at least one"):
        ab.save_control_vector([], tmp_path / "a.gguf")
    with pytest.raises(ab.InterventionError, match="not a file"):
        ab.load_control_vector(tmp_path / "missing.gguf")
    good = ab.save_control_vector(vectors(), tmp_path / "good.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:-40])
    (tmp_path / "text.gguf").write_text("not gguf")
    for bad in (cut, tmp_path / "text.gguf"):
        with pytest.raises(ab.VectorCorruptError):
            ab.load_control_vector(bad)
    other = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "llama")  # a model, not a control vector
    other.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    other.write_header_to_file()
    other.write_kv_data_to_file()
    other.write_tensors_to_file()
    other.close()
    with pytest.raises(ab.VectorCorruptError, match="architecture 'llama'"):
        ab.load_control_vector(tmp_path / "model.gguf")
