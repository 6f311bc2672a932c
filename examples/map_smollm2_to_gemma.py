"""The main job: map SmolLM2-135M-Instruct's residual stream onto Gemma-3-270m's.

1. Load both embedded real models (offline; dequantised once into the cache).
2. Collect paired activations on the bundled corpus: SmolLM2 layer 13 -> Gemma layer 9, tokens
   of the two tokenizers paired by character offsets (the alignment rate is printed).
3. Split by text, fit an affine map (closed form, one pass) and an autoencoder map (the paper's
   Linear-ReLU-Linear) on the training texts, and score both on the held-out texts.

Everything is cached under --dir; a rerun reuses the store (``mode="a"`` finishes an
interrupted collection).

    python examples/map_smollm2_to_gemma.py                 # ~2 min on 2 CPU cores
    python examples/map_smollm2_to_gemma.py --smoke         # tiny random models, for the tests
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import actbridge as ab


def models(smoke: bool):
    if not smoke:
        return ab.load_model("smollm2-135m-instruct"), ab.load_model("gemma-3-270m")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from conftest import tiny_model, tiny_tokenizer

    tok_s, tok_t = tiny_tokenizer("bpe"), tiny_tokenizer("unigram", padding_side="left")
    return (tiny_model("llama", vocab=len(tok_s), layers=16), tok_s), (
        tiny_model("gemma3", vocab=len(tok_t), layers=12, d=48),
        tok_t,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="example-maps")
    p.add_argument("--source-layer", type=int, default=13)
    p.add_argument("--target-layer", type=int, default=9)
    p.add_argument("--repeat", type=int, default=4, help="passes over the corpus (more rows)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    if args.smoke:
        args.repeat, args.epochs = 1, 2
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    (m_s, tok_s), (m_t, tok_t) = models(args.smoke)
    print(f"models loaded in {time.perf_counter() - t0:.1f} s")

    # The corpus, repeated with varied framings so the maps see more (distinct) contexts.
    corpus = ab.load_corpus()
    frames = ["{}", "Note: {}", "Read this carefully. {}", "Q: {}\nA:"]
    texts = [frames[r % len(frames)].format(t) for r in range(args.repeat) for t in corpus]

    t0 = time.perf_counter()
    store = ab.collect_pair(
        (m_s, tok_s, args.source_layer),
        (m_t, tok_t, args.target_layer),
        texts,
        root / "pairs",
        batch_size=8,
        mode="a",
    )
    print(
        f"paired store: {len(store):,} rows ({store.sites}), alignment rate "
        f"{store.metadata['alignment_rate']:.1%}, {time.perf_counter() - t0:.1f} s"
    )

    train, val = store.split(0.1, seed=0, by="doc")
    t0 = time.perf_counter()
    affine = ab.AffineMap.fit(store, rows=train, ridge=1e-2, progress=False)
    t_affine = time.perf_counter() - t0
    affine.save(root / "affine")
    t0 = time.perf_counter()
    ae = ab.AutoencoderMap.fit(
        store,
        rows=train,
        val_rows=val,
        epochs=args.epochs,
        lr=1e-3,
        batch_size=256,
        plateau_patience=1,
        standardize=True,
        progress=False,
    )
    t_ae = time.perf_counter() - t0
    ae.save(root / "autoencoder")

    print(f"\nheld-out texts: {len(val):,} rows; train: {len(train):,} rows")
    print("| map | fit time | val MSE | val FVU | val cosine | val R² |")
    print("|---|---|---|---|---|---|")
    for name, m, t in (("affine (ridge 1e-2)", affine, t_affine), (f"autoencoder h={ae.hidden}", ae, t_ae)):
        r = ab.evaluate_map(m, store, rows=val)
        print(f"| {name} | {t:.1f} s | {r['mse']:.4g} | {r['fvu']:.3f} | {r['cosine']:.3f} | {r['r2']:.3f} |")
    print(f"\nmaps saved under {root}/ (load with ab.load_map)")


if __name__ == "__main__":
    main()
