"""Atomic writes: a failed write leaves the previous good output untouched and no partial file behind."""

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ace_lora.io import atomic_dir, atomic_write, atomic_write_text


def test_atomic_write_replaces_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "sub" / "table.csv"
    atomic_write_text(path, "good\n")
    assert path.read_text() == "good\n"

    def fail(tmp):
        tmp.write_text("partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(path, fail)
    assert path.read_text() == "good\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.csv"]


def test_atomic_write_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    seen = []
    atomic_write(tmp_path / "overlay.png", lambda tmp: (seen.append(tmp.suffix), tmp.write_bytes(b"x")))
    assert seen == [".png"] and (tmp_path / "overlay.png").read_bytes() == b"x"


def test_atomic_dir_swaps_whole_folders_and_survives_failures(tmp_path):
    out = tmp_path / "prepared"
    with atomic_dir(out) as tmp:
        (tmp / "manifest.csv").write_text("v1")
    with pytest.raises(ValueError):
        with atomic_dir(out) as tmp:
            (tmp / "manifest.csv").write_text("half")
            raise ValueError("bad image")
    assert (out / "manifest.csv").read_text() == "v1"
    with atomic_dir(out) as tmp:
        (tmp / "other.csv").write_text("v2")
    assert sorted(p.name for p in out.iterdir()) == ["other.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_atomic_outputs_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "metrics.json", "{}\n")
        with atomic_dir(tmp_path / "prepared") as tmp:
            (tmp / "manifest.csv").write_text("x\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "prepared").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "prepared" / "manifest.csv").stat().st_mode) == 0o666 & ~umask


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _aged(path: Path) -> Path:
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    return path


def test_a_rerun_sweeps_the_temporary_files_a_killed_run_left(tmp_path):
    dead = _dead_pid()
    stale_dir = tmp_path / f".prepared.{dead}.abc123_x.tmp"
    stale_dir.mkdir()
    (stale_dir / "manifest.csv").write_text("half")
    _aged(stale_dir)
    stale_old = tmp_path / f".prepared.{dead}.abc123_x.old"
    stale_old.mkdir()
    _aged(stale_old)
    stale_file = _aged(_touch(tmp_path / f".metrics.{dead}.k2j4h5g6.tmp.json"))
    legacy_file = _aged(_touch(tmp_path / ".metrics.k2j4h5g6.tmp.json"))  # before temp names carried a pid
    legacy_old = tmp_path / ".prepared.old"
    legacy_old.mkdir()
    _aged(legacy_old)
    live = _aged(_touch(tmp_path / f".metrics.{os.getppid()}.k2j4h5g6.tmp.json"))  # a concurrent writer
    fresh = _touch(tmp_path / f".metrics.{dead}.zzzz9999.tmp.json")  # newer than this process: not ours to judge
    others = [
        _aged(_touch(tmp_path / f".metrics.{dead}.k2j4h5g6.tmp.csv")),  # another output's temp file
        _aged(_touch(tmp_path / "notes.tmp")),
        _aged(_touch(tmp_path / ".prepared.keep")),
    ]
    atomic_write_text(tmp_path / "metrics.json", "{}\n")
    assert not stale_file.exists() and not legacy_file.exists()
    assert live.exists() and fresh.exists() and all(p.exists() for p in others)
    with atomic_dir(tmp_path / "prepared") as tmp:
        (tmp / "manifest.csv").write_text("good")
    assert not stale_dir.exists() and not stale_old.exists() and not legacy_old.exists()
    assert (tmp_path / "prepared" / "manifest.csv").read_text() == "good"


def _touch(path: Path) -> Path:
    path.write_text("partial")
    return path
