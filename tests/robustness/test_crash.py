"""A writer killed with SIGKILL at any moment leaves a store that opens and holds exactly the
committed rows, bit-identical; resuming continues after them. Real subprocesses, real kills."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import actbridge as ab
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from crash_writer import expected_rows  # noqa: E402

KILLS = 30


@pytest.mark.crash
def test_sigkill_at_random_moments_never_loses_committed_rows(store_path):
    rng = np.random.default_rng(12345)
    script = Path(__file__).parent / "crash_writer.py"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    previous = 0
    for i in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(store_path), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        # Wait for the child to start writing, then kill it at a random moment.
        start_line = proc.stdout.readline()
        assert start_line.startswith("start"), proc.stderr.read()
        assert int(start_line.split()[1]) == previous  # resumed after the last committed row
        time.sleep(float(rng.uniform(0.0, 0.25)))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        committed = [int(line.split()[1]) for line in out.splitlines() if line.startswith("committed")]
        store = ab.ActivationStore(store_path)
        n = len(store)
        assert n >= max(committed, default=previous), "a flushed row was lost"
        assert n >= previous, "a committed row disappeared"
        np.testing.assert_array_equal(store.read("x"), expected_rows(0, n))
        np.testing.assert_array_equal(store.column("token_id"), np.arange(n))
        store.verify()
        previous = n
    assert previous > 0
