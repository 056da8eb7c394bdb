"""Things qtoolkit can rebuild, built once: content keys, staging directories, atomic publish.

* :func:`cache_key` -- the one key: the first 16 hex digits of
  sha256( "<name>:<sha256 of file>\\n" for each file, then json(payload, sorted keys) ).
* :func:`staging_dir` -- a fresh ``PARENT/.qtk-staging-<pid>-<random>`` directory, removed when the
  block ends; a run killed with SIGKILL cannot remove its own, so every new staging directory first
  removes those in PARENT whose pid is no longer running (:func:`remove_stale_staging`).
* :func:`publish` -- move everything built in a staging directory into place, one rename each, with
  a chosen item last so that its presence means the rest is there.
* :func:`get_or_build` -- a cache entry that is either complete or absent, never half-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from qtoolkit.atomic import sha256_file
from qtoolkit.paths import default_cache_dir

__all__ = [
    "cache_key",
    "default_cache_dir",
    "get_or_build",
    "publish",
    "remove_stale_staging",
    "staging_dir",
]

STAGING_PREFIX = ".qtk-staging-"
_STAGING_PID = re.compile(rf"^{re.escape(STAGING_PREFIX)}(\d+)-")
_LEGACY_MAX_AGE_S = 24 * 3600  # staging dirs of older versions carry no pid: removed after a day
T = TypeVar("T")


def cache_key(payload: Any, files: Iterable[str | os.PathLike[str]] = ()) -> str:
    """16 hex digits of sha256 over the ``files``' names and contents, then ``payload`` as sorted JSON.

    ``payload`` holds everything else that determines the cached thing (settings, data fingerprints,
    versions); values JSON cannot encode are written with ``str``.
    """
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{Path(path).name}:{sha256_file(path)}\n".encode())
    digest.update(json.dumps(payload, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _is_stale(staging: Path) -> bool:
    match = _STAGING_PID.match(staging.name)
    if match is not None:
        pid = int(match.group(1))
        return pid != os.getpid() and not _pid_running(pid)
    try:  # an older version's directory (no pid): stale once untouched for a day
        return time.time() - staging.stat().st_mtime > _LEGACY_MAX_AGE_S
    except OSError:
        return False


def remove_stale_staging(parent: str | os.PathLike[str]) -> list[Path]:
    """Remove ``PARENT/.qtk-staging-<pid>-*`` directories whose process is gone; returns them.

    A staging directory is only ever written by the process named in it, so when that pid is not
    running (a run killed with SIGKILL, a machine that lost power) nobody will publish or remove it.
    """
    parent = Path(parent)
    stale = [child for child in parent.glob(f"{STAGING_PREFIX}*") if _is_stale(child)]
    for child in stale:
        shutil.rmtree(child, ignore_errors=True)
    return stale


@contextlib.contextmanager
def staging_dir(parent: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh staging directory inside ``parent`` (created), removed with what is left in it on exit."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(parent)
    path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def publish(staging: Path, dest: Path, last: str | None = None) -> None:
    """Move every item of ``staging`` into ``dest`` (same file system), replacing same-named ones.

    Each file moves with one atomic rename; ``last`` moves after all others.
    """
    for item in sorted(staging.iterdir(), key=lambda p: (p.name == last, p.name)):
        target = dest / item.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)  # os.replace cannot replace a non-empty directory
        os.replace(item, target)


def get_or_build(entry: str | os.PathLike[str], build: Callable[[Path], T]) -> tuple[T | None, bool]:
    """Make sure cache ``entry`` (a file or a directory) exists; returns (build's result, was cached).

    On a miss ``build(tmp)`` writes ``tmp``, a path named like ``entry`` inside a staging directory
    next to it, plus any sibling files it wants published with it; all of them move next to
    ``entry``, ``entry`` itself last, so a reader that sees ``entry`` sees a complete build. When
    ``build`` raises (or the process dies) nothing appears under the cache's names.
    """
    entry = Path(entry)
    if entry.exists():
        return None, True
    with staging_dir(entry.parent) as staging:
        tmp = staging / entry.name
        value = build(tmp)
        if not tmp.exists():
            raise RuntimeError(f"cache build for {entry} did not write {tmp}")
        if entry.exists():  # a concurrent run published the same key first: keep theirs
            return value, False
        publish(staging, entry.parent, last=entry.name)
    return value, False
