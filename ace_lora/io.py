"""Atomic file and folder writes: a killed run never leaves a partial output that looks complete.

Temporary siblings are named ``.<name>.<pid>.<random>.tmp<suffix>``; every atomic write first removes the stale ones
of the same output (left by a killed run: their process is gone and they predate this one), so a rerun cleans up
after a kill. Outputs get the permissions the process umask gives (``mkstemp``/``mkdtemp`` alone would make them
private).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: When this process started using this module; temporary files older than this may be stale.
_STARTED = time.time()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (``/proc/self/status`` on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _follow_umask(path: Path, folder: bool) -> None:
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def _temp_pattern(path: Path, folder: bool) -> re.Pattern:
    base, suffix = (path.name, "") if folder else (path.stem, path.suffix)
    return re.compile(rf"\.{re.escape(base)}\.(?:(\d+)\.)?(?:[a-z0-9_]+\.)?(?:tmp|old){re.escape(suffix)}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_stale(path: str | Path, folder: bool = False) -> list[Path]:
    """Remove the temporary siblings of output ``path`` that a killed run left (see the module doc); returns them.

    Only names of this module's pattern for this very output are touched, and only when they predate this process
    and the process that made them is gone (a concurrent writer's temporary files stay).
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = _temp_pattern(path, folder)
    removed = []
    for entry in path.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match is None or (match.group(1) and _alive(int(match.group(1)))):
            continue
        try:
            if entry.lstat().st_mtime >= _STARTED:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            continue
        removed.append(entry)
    return removed


def within(root: str | Path, path: str | Path) -> bool:
    """Whether ``path`` lies inside ``root`` once ``.`` and ``..`` are resolved lexically: the check for paths built
    from table values or archive entries (links the user placed in a data folder are trusted)."""
    root, path = os.path.normpath(os.path.abspath(root)), os.path.normpath(os.path.abspath(path))
    return os.path.commonpath([root, path]) == root


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it over ``path``.

    The suffix of ``path`` is kept on the temporary name (writers such as matplotlib choose the format by it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{os.getpid()}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        _follow_umask(Path(tmp), folder=False)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary sibling of ``path``, then rename it over ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path``, on failure it is removed.

    A previous complete ``path`` survives a failed run untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path, folder=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _follow_umask(tmp, folder=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.{os.getpid()}.{tmp.name.rsplit('.', 2)[-2]}.old")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
