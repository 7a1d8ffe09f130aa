"""Preparation at scale: worker processes write the same bytes as one process; JPEG draft decoding stays close to a
full decode; the worker count follows Snakemake's threads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ace_lora.config import DataConfig, DemoConfig
from ace_lora.data import prepare as P
from ace_lora.data import prepare_dataset
from ace_lora.data.readers import DRAFT_FACTOR, BadInputError, read_image
from ace_lora.demo import write_fixture
from ace_lora.demo.painters import render_chest


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "prepare_report.json"
    }


@pytest.mark.parametrize("name", ["mimic", "siim"])  # JPEGs + reports; DICOMs + RLE masks + header ids
def test_parallel_prepare_equals_serial_byte_for_byte(tmp_path, name):
    demo = DemoConfig(n_train=70, n_per_class=12, image_size=48)
    write_fixture(name, tmp_path / "raw" / name, demo)
    cfg = DataConfig(image_size=32, demo=demo)
    serial = prepare_dataset(name, tmp_path / "raw", tmp_path / "serial", cfg, workers=1)
    parallel = prepare_dataset(name, tmp_path / "raw", tmp_path / "parallel", cfg, workers=2)
    a, b = _files(tmp_path / "serial"), _files(tmp_path / "parallel")
    assert serial["counts"]["images"] >= 64  # enough images for two worker processes (32 each at least)
    assert len(a) > serial["counts"]["images"] and a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    assert serial["counts"] == parallel["counts"]


def test_parallel_prepare_reports_bad_input(tmp_path):
    demo = DemoConfig(n_train=70, n_per_class=12, image_size=48)
    write_fixture("mimic", tmp_path / "raw" / "mimic", demo)
    victim = sorted((tmp_path / "raw" / "mimic").rglob("*.jpg"))[40]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated JPEG
    with pytest.raises(BadInputError, match=victim.name):
        prepare_dataset("mimic", tmp_path / "raw", tmp_path / "out", DataConfig(image_size=32, demo=demo), workers=2)
    assert not (tmp_path / "out").exists()
    report = prepare_dataset(
        "mimic",
        tmp_path / "raw",
        tmp_path / "out",
        DataConfig(image_size=32, demo=demo, on_bad_input="skip"),
        workers=2,
    )
    assert report["skipped"]["count"] == 1 and report["skipped"]["by_reason"] == {"unreadable": 1}


def _xray_jpeg(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A synthetic chest radiograph with film-grain noise, saved as a grayscale JPEG (quality 95)."""
    rng = np.random.default_rng(seed)
    chest, _ = render_chest(max(width, height), {"Cardiomegaly": 1.0, "Pleural Effusion": 1.0}, rng)
    arr = chest[:height, :width] * 255 + rng.normal(0, 4, (height, width))
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=95)
    return path


def test_jpeg_draft_decoding_is_close_to_full_decode(tmp_path):
    source = _xray_jpeg(tmp_path / "big.jpg", 1200, 1000)
    size = 100  # 1000 / 100 = 10 >= 2 x DRAFT_FACTOR: decoded at 1/4 scale (300 x 250)
    draft = read_image(source, shortest=size)
    full = read_image(source)
    assert full.size == (1200, 1000) and draft.size == (300, 250)
    assert draft.info["original_size"] == full.info["original_size"] == (1200, 1000)
    assert min(draft.size) >= DRAFT_FACTOR * size
    a = np.asarray(P._resize_shortest(draft.convert("L"), size, Image.Resampling.BICUBIC), dtype=float)
    b = np.asarray(P._resize_shortest(full.convert("L"), size, Image.Resampling.BICUBIC), dtype=float)
    assert a.shape == b.shape == (100, 120)
    assert np.abs(a - b).mean() < 1.5 and np.abs(a - b).max() < 24  # grey levels of 255
    # not worth it (or not possible): a target close to the source, a PNG
    assert read_image(source, shortest=300).size == (1200, 1000)
    Image.open(source).save(tmp_path / "big.png")
    assert read_image(tmp_path / "big.png", shortest=100).size == (1200, 1000)


def test_draft_keeps_original_size_in_the_manifest(tmp_path):
    """MIMIC images decoded in draft mode still record their original width and height."""
    demo = DemoConfig(n_train=8, n_per_class=2, image_size=48)
    write_fixture("mimic", tmp_path / "raw" / "mimic", demo)
    for path in (tmp_path / "raw" / "mimic").rglob("*.jpg"):
        _xray_jpeg(path, 160, 128)
    prepare_dataset("mimic", tmp_path / "raw", tmp_path / "out", DataConfig(image_size=16, demo=demo), workers=1)
    import pandas as pd

    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert set(manifest["orig_width"]) == {160} and set(manifest["orig_height"]) == {128}
    with Image.open(tmp_path / "out" / manifest["image"][0]) as img:
        assert img.size == (16, 16)  # training pairs: straight to size x size


def test_default_workers_follow_snakemake_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert P.default_workers() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert P.default_workers() == len(__import__("os").sched_getaffinity(0))
