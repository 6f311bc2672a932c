"""Child process for the crash tests: appends deterministic rows to a store until killed.

Row r holds x[r, j] = ((7 r + j) mod 256) - 128 (exact in bfloat16) and token_id = r. After
every flush it prints the committed row count, so the parent knows a lower bound on what must
survive a SIGKILL.
"""

import sys

import actbridge as ab
import numpy as np

DIM = 24


def expected_rows(start: int, stop: int) -> np.ndarray:
    r = np.arange(start, stop)[:, None]
    return (((7 * r + np.arange(DIM)[None, :]) % 256) - 128).astype(np.float32)


def main(path: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = ab.StoreWriter(path, sites={"x": DIM}, shard_rows=int(rng.integers(5, 60)), mode="a")
    row = w.rows
    print(f"start {row}", flush=True)
    while True:
        n = int(rng.integers(1, 80))
        w.append(x=expected_rows(row, row + n), token_id=np.arange(row, row + n))
        row += n
        if rng.random() < 0.3:
            print(f"committed {w.flush()}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
