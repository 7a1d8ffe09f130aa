"""Preparation throughput on real-size images: images/s per core and the projected full-MIMIC time.

Writes synthetic sources of the real sizes to a temporary folder (MIMIC-CXR-JPG: 3000x2500 grayscale JPEGs at
quality 95, about 1.6 MB each like the real ones; RSNA/SIIM: 1024x1024 16-bit DICOMs), then times the stage's own
per-image function (decode, resize to ``--size``, write PNG) on one core, with and without JPEG draft decoding, and
the stage's worker-process map over ``--workers`` processes.

    python benchmarks/bench_prepare.py                              # 224 px, 1 and 2 workers
    python benchmarks/bench_prepare.py --workers 1 2 4 --images 32  # on a bigger machine
    python benchmarks/bench_prepare.py --images 2 --jpeg 600 500 --dicom 128 --size 32 --workers 1   # seconds

The projection divides MIMIC-CXR's 377,110 images by 16 cores at the one-core rate (images are independent, so the
work scales with the cores while the disk keeps up: ~35 MB/s per core at 1.5 MB per image). The worker-process runs
show the stage's scaling on this machine, pool start-up included (about a second per worker); on a machine shared
with other jobs they are lower bounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ace_lora.data import prepare as P
from ace_lora.data import readers
from ace_lora.data.collectors import Issues, Item
from ace_lora.demo.dicom import write_dicom
from ace_lora.demo.painters import render_chest
from ace_lora.io import atomic_write_json

MIMIC_IMAGES = 377_110
TARGET_CORES = 16


def _sources(root: Path, n: int, jpeg: tuple[int, int], dicom: int) -> dict[str, list[Item]]:
    rng = np.random.default_rng(0)
    width, height = jpeg
    chest, _ = render_chest(max(width, height, dicom), {"Cardiomegaly": 1.0, "Pleural Effusion": 1.0}, rng)
    # smooth anatomy plus grain: at 3000x2500 and quality 95 about 1.6 MB, near MIMIC-CXR-JPG's mean file size
    # (PhysioNet lists 570 GB for its 377,110 JPEGs: 1.5 MB); decoding time grows with the compressed size
    smooth = np.asarray(
        Image.fromarray((chest[:height, :width] * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2)),
        dtype=np.float64,
    )
    items: dict[str, list[Item]] = {"jpeg": [], "dicom": []}
    for i in range(n):
        arr = smooth + rng.normal(0, 2, (height, width))
        path = root / f"mimic_{i}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=95)
        items["jpeg"].append(Item(path, f"images/mimic_{i}.png", {}))
        img = np.clip(chest[:dicom, :dicom] + rng.normal(0, 0.01, (dicom, dicom)), 0, 1)
        path = root / f"rsna_{i}.dcm"
        write_dicom(
            path,
            img,
            variant=i,
            patient_id=f"p{i}",
            sop_uid=f"1.2.3.{i}",
            study_uid=f"1.2.4.{i}",
            series_uid=f"1.2.5.{i}",
        )
        items["dicom"].append(Item(path, f"images/rsna_{i}.png", {}))
    return items


def _per_image_s(items: list[Item], out: Path, size: int, draft: bool) -> float:
    """Median CPU seconds of the stage's per-image function (decode + resize + PNG write) in this process: the
    one-core cost, which other jobs on a shared machine change much less than the wall time."""
    saved = readers.DRAFT_FACTOR
    readers.DRAFT_FACTOR = saved if draft else 10**9  # never worth drafting: a full decode
    try:
        P._process(items[0], out, size)  # warm-up (imports, caches)
        times = []
        for item in items:
            start = time.process_time()
            P._process(item, out, size)
            times.append(time.process_time() - start)
    finally:
        readers.DRAFT_FACTOR = saved
    return statistics.median(times)


def _parallel_rate(items: list[Item], out: Path, size: int, workers: int) -> float:
    """Images/s of the stage's map over ``workers`` processes (pool start-up included), items repeated so that each
    worker gets 32 at least (the stage's minimum per worker)."""
    batch = (items * (1 + 32 * workers // len(items)))[: max(32 * workers, len(items))]
    batch = [Item(it.source, f"images/{k}.png", {}) for k, it in enumerate(batch)]
    start = time.perf_counter()
    rows = P._run(batch, out, size, Issues("error", out), workers, "bench")
    seconds = time.perf_counter() - start
    assert len(rows) == len(batch)
    return len(batch) / seconds


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=12, help="distinct source images of each kind")
    ap.add_argument("--jpeg", type=int, nargs=2, default=[3000, 2500], metavar=("W", "H"))
    ap.add_argument("--dicom", type=int, default=1024, help="DICOM side")
    ap.add_argument("--size", type=int, default=224, help="data.image_size (prepared shortest side)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker processes of the parallel runs")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    results: dict = {
        "jpeg": args.jpeg,
        "dicom": args.dicom,
        "size": args.size,
        "cpus": cpus,
        "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        (root / "raw").mkdir()
        items = _sources(root / "raw", args.images, tuple(args.jpeg), args.dicom)
        print(
            f"# wrote {args.images} JPEGs {args.jpeg[0]}x{args.jpeg[1]} and {args.images} DICOMs "
            f"{args.dicom}^2 in {time.perf_counter() - t0:.1f}s; {cpus} CPUs, load {results['load_avg']}",
            flush=True,
        )
        serial = {}
        for kind, draft in (("jpeg", False), ("jpeg", True), ("dicom", False)):
            s = _per_image_s(items[kind], root / "out", args.size, draft)
            key = f"{kind}{'_draft' if draft else ''}"
            serial[key] = s
            print(f"{key:11s} one core: {1000 * s:7.1f} CPU-ms/image  {1 / s:6.2f} images/s", flush=True)
        results["serial_s_per_image"] = serial
        parallel = {}
        for workers in args.workers:
            rate = _parallel_rate(items["jpeg"], root / f"par{workers}", args.size, workers)
            parallel[workers] = {"images_per_s": rate, "images_per_s_per_core": rate / workers}
            print(f"jpeg_draft {workers} worker(s): {rate:6.2f} images/s = {rate / workers:6.2f} per core", flush=True)
        results["parallel_jpeg_draft"] = parallel
    per_core = 1 / serial["jpeg_draft"]
    hours = MIMIC_IMAGES / (per_core * TARGET_CORES) / 3600
    results.update(
        mimic_images=MIMIC_IMAGES,
        target_cores=TARGET_CORES,
        per_core_images_per_s=per_core,
        projected_mimic_hours=hours,
        projected_mimic_hours_full_decode=MIMIC_IMAGES * serial["jpeg"] / TARGET_CORES / 3600,
    )
    print(
        f"projected full MIMIC-CXR ({MIMIC_IMAGES:,} JPEGs) on {TARGET_CORES} cores at the one-core rate: "
        f"{hours:.2f} h with draft decoding ({per_core:.2f} images/s/core), "
        f"{results['projected_mimic_hours_full_decode']:.2f} h with full decoding",
        flush=True,
    )
    if args.json:
        atomic_write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
