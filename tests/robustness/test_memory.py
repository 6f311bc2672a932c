"""Reading a store larger than the page budget keeps resident memory bounded.

The bound is the budget plus what one gather maps. The kernel maps more than a gather reads:
fault-around and large page-cache folios map up to a folio (<= 2 MiB) per scattered row, so the
test uses small batches (8 rows: at most ~16 MiB per gather) over a ~117 MiB store.
"""

from __future__ import annotations

import actbridge as ab
import numpy as np


def rss_file_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


def peak_rss_growth(path, page_budget):
    s = ab.ActivationStore(path, page_budget=page_budget)
    s.release_pages()
    base = peak = rss_file_kib()
    for _ in s.batches("x", batch_size=8, shuffle=True, prefetch=1):
        peak = max(peak, rss_file_kib())
    for start in range(0, len(s), 8192):
        s.read("x", slice(start, start + 8192))
        peak = max(peak, rss_file_kib())
    return (peak - base) / 1024  # MiB


def test_page_budget_bounds_resident_memory(store_path):
    rows, dim = 60_000, 1024  # ~117 MiB of bfloat16
    rng = np.random.default_rng(0)
    block = rng.standard_normal((5000, dim)).astype(np.float32)
    with ab.StoreWriter(store_path, sites={"x": dim}, shard_rows=8192) as w:
        for _ in range(rows // 5000):
            w.append(x=block)
    unbounded = peak_rss_growth(store_path, page_budget=1 << 40)
    bounded = peak_rss_growth(store_path, page_budget=8 << 20)
    assert unbounded > 80, f"the test store was not read through the mapping ({unbounded:.0f} MiB)"
    # 8 MiB budget + two in-flight gathers of 8 rows x 2 MiB (32 MiB) + slack.
    assert bounded < 48, f"resident memory grew by {bounded:.0f} MiB with an 8 MiB budget"
