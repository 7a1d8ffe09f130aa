"""Loader feed rate: images/s (per core) of the training data path from the prepared cache.

The trainer's path exactly: :class:`ace_lora.data.dataset.PairDataset` over a prepared manifest (PNG decode, the
preset's training transform: grayscale -> RGB, bicubic resize to the model's input, tensor, normalisation; the
pre-tokenised report and labels), batched and collated by a ``DataLoader`` with ``--workers`` worker processes, a
fresh loader per pass as in each training epoch (worker start-up included). The cache holds synthetic radiographs
at the prepared size of the preset (shortest side 224 for biomedclip, MIMIC's 5:6 aspect).

    python benchmarks/bench_loader.py                           # biomedclip (224 px), 0 and 2 workers
    python benchmarks/bench_loader.py --workers 0 1 2 4 --images 2048
    python benchmarks/bench_loader.py --preset tiny --images 64 --workers 0   # seconds

Per core: workers = 0 runs on the main process (one core); N workers use N cores (the main process only receives
batches). On a machine shared with other jobs these are lower bounds; the workers = 0 run also reports images per
CPU-second of the process, which other jobs change much less.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ace_lora.data.dataset import PairDataset
from ace_lora.data.readers import CHEXPERT_FINDINGS
from ace_lora.demo.painters import render_chest
from ace_lora.io import atomic_write_json
from ace_lora.models import get_preset
from ace_lora.models.biomedclip import build_image_transform


def _cache(root: Path, n: int, size: int) -> pd.DataFrame:
    """``n`` prepared-cache PNGs (grayscale, shortest side ``size``, 5:6 portrait) and their manifest."""
    rng = np.random.default_rng(0)
    height = round(size * 6 / 5)
    chest, _ = render_chest(height, {"Edema": 1.0}, rng)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        arr = chest[:, :size] * 255 + rng.normal(0, 4, (height, size))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / f"images/{i}.png")
        rows.append(
            {
                "image": f"images/{i}.png",
                "text": f"report {i}",
                **{c: int(rng.random() < 0.2) for c in CHEXPERT_FINDINGS},
            }
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="biomedclip", choices=("biomedclip", "tiny"))
    ap.add_argument("--images", type=int, default=1024, help="cached images (one pass = one epoch)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker processes")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per worker count (median reported)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    preset = get_preset(args.preset)
    context = preset.context_length

    def tokenize(texts):  # the reports are tokenised once, before training: not part of the feed rate
        return torch.zeros(len(texts), context, dtype=torch.long), torch.ones(len(texts), context, dtype=torch.long)

    results: dict = {
        "preset": args.preset,
        "image_size": preset.image_size,
        "images": args.images,
        "batch_size": args.batch_size,
        "cpus": len(os.sched_getaffinity(0)),
        "load_avg": os.getloadavg()[0],
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        manifest = _cache(Path(tmp), args.images, preset.image_size)
        dataset = PairDataset(manifest, tmp, build_image_transform(preset, train=True), tokenize, CHEXPERT_FINDINGS)
        print(
            f"# {args.preset}: {args.images} cached PNGs {preset.image_size}x{round(preset.image_size * 6 / 5)} -> "
            f"{preset.image_size}^2 batches of {args.batch_size}; {results['cpus']} CPUs, load "
            f"{results['load_avg']:.1f}",
            flush=True,
        )
        for workers in args.workers:
            times, cpu = [], []
            for repeat in range(args.repeats):
                loader = DataLoader(
                    dataset,
                    batch_size=args.batch_size,
                    shuffle=True,
                    drop_last=True,
                    num_workers=workers,
                    generator=torch.Generator().manual_seed(repeat),
                )
                start, start_cpu = time.perf_counter(), time.process_time()
                seen = sum(batch["image"].shape[0] for batch in loader)
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
            rate = seen / statistics.median(times)
            cores = max(1, workers)
            run = {"images_per_s": rate, "images_per_s_per_core": rate / cores, "times_s": times}
            if workers == 0:  # all work on this process: its CPU time is the cost, whatever else runs on the machine
                run["images_per_cpu_s"] = seen / statistics.median(cpu)
            results["runs"][workers] = run
            print(
                f"workers {workers}: {rate:7.1f} images/s = {rate / cores:6.1f} per core "
                f"(pass {statistics.median(times):.2f}s)"
                + (f"; {run['images_per_cpu_s']:.1f} images per CPU-second" if workers == 0 else ""),
                flush=True,
            )
    if args.json:
        atomic_write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
