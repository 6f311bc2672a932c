"""Saved files that are whole and checked.

:func:`replacing` writes any file atomically (temp file beside it, fsync, rename), so a reader
or a kill sees the old file or the new one, never half of one. Checksums for saved artifacts
(maps, steering vectors): a directory's ``config.json`` records the sha256 of each weight file
and of the config's own content, and loading checks both, so a flipped byte or a truncation is
an error instead of different weights.

``config["integrity"] = {"files": {name: sha256}, "config_sha256": sha256}``, where the config
digest covers the canonical JSON (sorted keys, compact) of the config without its
``integrity`` entry. Artifacts saved before checksums existed (no ``integrity`` entry) still
load; a present but wrong checksum never does.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: The largest config.json an artifact loader reads (configs are a few kB).
MAX_CONFIG_BYTES = 64 << 20


def fresh_path_beside(target: Path, *, directory: bool) -> Path:
    """A new, empty file (or directory) named ``.<target name>-<random>.tmp`` in ``target``'s
    directory (created if missing), for writing ``target``'s next version before renaming it
    into place. Unlike ``tempfile.mkstemp`` / ``mkdtemp`` (always 0600 / 0700), it gets the
    permissions a plain ``open`` / ``mkdir`` would (0666 / 0777 less the umask), so the renamed
    result is as readable as any other file the user writes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = target.parent / f".{target.name}-{secrets.token_hex(6)}.tmp"
        try:
            if directory:
                tmp.mkdir(mode=0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:  # another writer's name: draw again
            continue
        return tmp


@contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` for the block to write (by any writer: ``open``,
    safetensors, GGUF). When the block ends without error the file is fsynced and renamed over
    ``path``; when it raises, the temporary file is removed and ``path`` is left as it was.
    Parent directories are created. Concurrent writers never share a temporary file."""
    target = Path(path)
    tmp = fresh_path_beside(target, directory=False)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_sha256(config: Mapping[str, Any]) -> str:
    """The sha256 of ``config``'s canonical JSON, its ``integrity`` entry left out."""
    body = {k: v for k, v in config.items() if k != "integrity"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def seal(config: dict[str, Any], directory: Path, files: list[str]) -> dict[str, Any]:
    """``config`` (plain JSON types) with its ``integrity`` entry for ``files`` in ``directory``."""
    out = {k: v for k, v in config.items() if k != "integrity"}
    out["integrity"] = {
        "files": {name: file_sha256(directory / name) for name in files},
        "config_sha256": content_sha256(out),
    }
    return out


def write_config(directory: Path, config: Mapping[str, Any], files: list[str], default: Any = None) -> None:
    """``directory/config.json``: ``config`` as a reader will see it (``default`` converts what
    JSON cannot hold) and sealed over ``files``, written atomically (temp file, rename)."""
    plain = json.loads(json.dumps(config, default=default))
    with replacing(directory / "config.json") as tmp:
        tmp.write_text(json.dumps(seal(plain, directory, files), indent=2))


def read_config(path: Path, error: type[Exception]) -> dict[str, Any]:
    """A config.json as a dict; a missing, oversized, non-JSON, too deeply nested or
    non-object file raises ``error`` saying which."""
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise error(f"{path} is missing") from e
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read, a device never end
        raise error(f"{path} is not a regular file")
    size = st.st_size
    if size > MAX_CONFIG_BYTES:
        raise error(f"{path} is {size} bytes, more than the {MAX_CONFIG_BYTES} a config may have")
    try:
        config = json.loads(path.read_text())
    except RecursionError:
        raise error(f"{path} is nested too deeply to be a config") from None
    except (OSError, ValueError) as e:
        raise error(f"{path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise error(f"{path} must hold a JSON object")
    return config


def check(config: Mapping[str, Any], directory: Path, error: type[Exception]) -> None:
    """Raise ``error`` unless the checksums in ``config["integrity"]`` match (nothing to check
    when the entry is absent: an artifact from before checksums)."""
    integrity = config.get("integrity")
    if integrity is None:
        return
    if not isinstance(integrity, dict) or not isinstance(integrity.get("files"), dict):
        raise error(f"{directory / 'config.json'}: its integrity entry is malformed")
    if integrity.get("config_sha256") != content_sha256(config):
        raise error(
            f"{directory / 'config.json'} does not match its checksum: the file was changed or damaged"
        )
    for name, digest in integrity["files"].items():
        path = directory / str(name)
        if not path.is_file():
            raise error(f"{path} is missing")
        if file_sha256(path) != digest:
            raise error(f"{path} does not match the checksum in config.json: the file is damaged")
