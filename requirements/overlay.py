"""Make a venv that sees everything installed in the running interpreter's venv, with a few
packages replaced (``make test-min``: the oldest supported transformers over .venv's torch).

    .venv/bin/python requirements/overlay.py DIR LOCK

DIR is created anew (``python -m venv --without-pip``); LOCK (a hashed, complete lock of the
replacement packages) is installed into DIR's own site-packages, which comes first on sys.path,
and a ``.pth`` file there adds the running venv's site-packages after it (its ``.pth`` files,
such as actbridge's editable install, included).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path


def main() -> None:
    target, lock = Path(sys.argv[1]), Path(sys.argv[2])
    shutil.rmtree(target, ignore_errors=True)
    venv.create(target, with_pip=False)
    base = Path(sysconfig.get_path("purelib"))
    own = target / "lib" / base.parent.name / "site-packages"
    # Processed after the packages installed here (.pth files run in name order, after the
    # directory itself is on sys.path), so the overlay's versions win.
    (own / "zz_base_venv.pth").write_text(f"import site; site.addsitedir({str(base)!r})\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--require-hashes",
            "--no-deps",
            "--target",
            str(own),
            "-r",
            str(lock),
        ],
        check=True,
    )


if __name__ == "__main__":
    main()
