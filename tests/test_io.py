"""Atomic writes: a failed write leaves the previous good output untouched and no partial file behind."""

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
