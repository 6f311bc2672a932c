"""``actbridge.integrity.replacing``: every saved file (maps, vectors, sweep checkpoints, GGUF
control vectors, the experiments' JSON) is replaced whole. A writer killed with SIGKILL at any
moment leaves the old file or the new one, never a mix; a writer that raises leaves the old
file and no temporary file. Real subprocesses, real kills."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from actbridge.integrity import fresh_path_beside, replacing

#: The child rewrites ``path`` forever, each version the next digit repeated over 4 MB (so a
#: rename of half a file, or two versions mixed, shows as more than one distinct byte); it says
#: so once it has replaced the file the first time.
CHILD = """
import os, sys
from actbridge.integrity import replacing
path = sys.argv[1]
k = int(open(path, "rb").read(1)) if os.path.exists(path) else 0  # go on from the last version
first = True
while True:
    k += 1
    with replacing(path) as tmp:
        with open(tmp, "wb") as f:
            for _ in range(64):
                f.write(str(k % 10).encode() * (1 << 16))
    if first:  # the parent may kill it from now on
        print("replaced", flush=True)
        first = False
"""


def test_block_that_ends_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deep" / "er" / "a.json"  # parents are created
    with replacing(path) as tmp:
        assert tmp.parent == path.parent and tmp != path and tmp.is_file()
        tmp.write_text('{"v": 1}')
        assert not path.exists()  # nothing is visible before the block ends
    assert json.loads(path.read_text()) == {"v": 1}
    with replacing(path) as tmp:
        tmp.write_text('{"v": 2}')
    assert json.loads(path.read_text()) == {"v": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_block_that_raises_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with replacing(path) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("writer failed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_nested_writers_to_one_path_never_share_a_temporary(tmp_path):
    path = tmp_path / "a.txt"
    with replacing(path) as first, replacing(path) as second:
        assert first != second
        first.write_text("first")
        second.write_text("second")
    assert path.read_text() == "first"  # the outer block ends last and wins
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_replaced_files_and_directories_get_the_permissions_a_plain_write_would(tmp_path, umask):
    """Not mkstemp's 0600 nor mkdtemp's 0700: a saved map, store file or model directory is as
    readable by the group (or others) as anything else the user writes with that umask."""
    old = os.umask(umask)
    try:
        with replacing(tmp_path / "a.json") as tmp:
            tmp.write_text("{}")
        directory = fresh_path_beside(tmp_path / "model", directory=True)
        plain = tmp_path / "plain"
        plain.write_text("")
        (tmp_path / "plain-dir").mkdir()
    finally:
        os.umask(old)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "a.json") == mode(plain) == 0o666 & ~umask
    assert mode(directory) == mode(tmp_path / "plain-dir") == 0o777 & ~umask
    assert directory.parent == tmp_path and directory.name.startswith(".model-")


def test_fresh_paths_beside_one_target_are_all_distinct_and_new(tmp_path):
    target = tmp_path / "sub" / "x"  # the parent is created
    paths = [fresh_path_beside(target, directory=i % 2 == 0) for i in range(50)]
    assert len(set(paths)) == 50
    assert all(p.parent == target.parent and p.is_dir() == (i % 2 == 0) for i, p in enumerate(paths))
    assert all(p.stat().st_size == 0 for p in paths if p.is_file())


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_at_random_moments_leaves_one_whole_version(tmp_path):
    path = tmp_path / "file.bin"
    rng = random.Random(0)
    seen: set[int] = set()
    for _ in range(8):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE)
        assert child.stdout is not None and child.stdout.readline() == b"replaced\n"
        time.sleep(rng.random() * 0.1)  # a 4 MB version takes a few ms: kills land mid-write
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        data = path.read_bytes()
        assert len(data) == 64 << 16, "a partial file was renamed into place"
        assert len(set(data)) == 1, "two versions mixed in one file"
        seen.add(data[0])
    assert len(seen) > 1  # each child wrote at least one new version
    # what a kill can leave is a temporary beside the file, named for it, never the file half-written
    assert all(p.name == "file.bin" or p.name.startswith(".file.bin-") for p in tmp_path.iterdir())
