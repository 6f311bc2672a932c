"""One rank of a test process group (gloo, CPU), started by test_distributed.py with RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT set:

    python dist_worker.py MODE STORE OUT

Writes ``OUT/rank{R}.npz`` (arrays) and ``OUT/rank{R}.json`` (what happened, including the
class of any actbridge error) and exits 0 unless something unexpected went wrong.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import actbridge as ab
import numpy as np
from actbridge.testing import tiny_model, tiny_tokenizer


def main() -> None:
    mode, store_path, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    group = ab.distributed.init_from_env(timeout_s=float(os.environ.get("AB_TEST_TIMEOUT", "30")))
    assert group is not None and group.backend == "gloo"
    rank = group.rank
    arrays: dict[str, np.ndarray] = {}
    report: dict[str, object] = {"rank": rank, "world": group.world}
    t0 = time.perf_counter()
    try:
        if mode == "collect":
            model, tok = tiny_model("llama", layers=3), tiny_tokenizer()
            texts = [f"text number {i} " + "word " * (i % 7 + 1) for i in range(23)]
            ab.collect(model, tok, texts, [0, 2], store_path, batch_size=4, progress=False)
            store = ab.ActivationStore(store_path)
            arrays = {"layer2": store.read("layer2"), "doc": store.column("doc")}
        else:
            store = ab.ActivationStore(store_path)
            rows = np.arange(0, 9000, 2)
        if mode == "affine":
            m = ab.AffineMap.fit(store, rows=rows, ridge=0.1, progress=False)
            whole = ab.AffineMap.fit(store, progress=False)  # every row: shared as two ranges
            arrays = {"weight": m.weight, "bias": m.bias, "weight_all": whole.weight}
            report["provenance"] = m.provenance["distributed"]
        elif mode == "affine_own":  # each rank its own arrays; the sum is all of them
            x, y = store.read("source"), store.read("target")
            half = slice(0, 5000) if rank == 0 else slice(5000, 12000)
            m = ab.AffineMap.fit(x[half], y[half], distributed="own")
            arrays = {"weight": m.weight, "bias": m.bias}
        elif mode == "ae":
            m = ab.AutoencoderMap.fit(
                store,
                rows=rows,
                val_rows=np.arange(9000, 12000),
                epochs=3,
                batch_size=251,  # shares of 125 and 126 rows
                lr=3e-3,
                backend="torch",
                grad_clip=1.0,
                progress=False,
            )
            arrays = m.tensors()
            report["history"] = m.history
            report["distributed"] = m.config["distributed"]
        elif mode == "grad":  # one DDP step's gradients on an uneven share of a 251-row batch
            import torch
            from actbridge.maps.training import shared_batch_loss, torch_module
            from torch.nn.parallel import DistributedDataParallel

            torch.manual_seed(0)
            net = DistributedDataParallel(torch_module(32, 28, 24))
            (batch,) = list(
                store.batches(["source", "target"], batch_size=251, rows=np.arange(251), share=(rank, 2))
            )
            out_t = net(torch.from_numpy(batch["source"]))
            loss, _ = shared_batch_loss(out_t, torch.from_numpy(batch["target"]), 251, group.world)
            loss.backward()
            arrays = {k: p.grad.numpy() for k, p in net.module.named_parameters()}
            report["rows"] = len(batch["source"])
        elif mode == "mismatch":
            ab.AffineMap.fit(store, rows=rows, ridge=0.1 if rank == 0 else 1.0, progress=False)
        elif mode == "rust":
            ab.AutoencoderMap.fit(store, rows=rows, backend="rust", epochs=1, progress=False)
        elif mode == "die":
            if rank == 1:
                os._exit(3)  # a rank that dies before the collective fit
            ab.AffineMap.fit(store, rows=rows, progress=False)
    except ab.ActbridgeError as e:
        report["error"] = type(e).__name__
        report["message"] = str(e)
    report["seconds"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / f"rank{rank}.npz", **arrays)
    (out / f"rank{rank}.json").write_text(json.dumps(report, default=str))
    if "error" in report:  # the group may be broken (a dead peer): leave without tearing it down
        sys.stdout.flush()
        os._exit(0)
    ab.distributed.shutdown()  # gloo's threads must stop before exit, or C++ aborts the process


if __name__ == "__main__":
    main()
