"""Evaluation throughput: images/s of zero-shot evaluation, batched vs one image at a time.

    python benchmarks/bench_eval.py --preset tiny --images 256
    python benchmarks/bench_eval.py --preset biomedclip --images 32 --batch-size 16
    python benchmarks/bench_eval.py --preset biomedclip --images 32 --batch-size 16 --precision bf16  # AMX CPU

Random-weight towers (no checkpoint needed) on synthetic PNGs written to a temporary folder; the timed path is
the one ``evaluate_benchmark`` uses (PNG decode + eval transform + ``encode_image``), plus the whole
``evaluate_benchmark`` call (prompts, logits, metrics and the bootstrap) for a 5-class benchmark.
Numbers on a shared CPU are noisy: report the median of ``--repeats`` runs and say which machine gave them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ace_lora.config import EvaluateConfig, ModelConfig
from ace_lora.eval.zeroshot import embed_images, evaluate_benchmark
from ace_lora.io import atomic_write_json

CLASSES = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


@dataclasses.dataclass
class _Spec:
    name: str = "bench5"
    task: str = "multiclass"
    classes: tuple = tuple(CLASSES)
    positive: str | None = None


def _build(preset: str, device: torch.device):
    import ace_lora
    from ace_lora.models import build_model

    try:
        model = build_model(ModelConfig(preset=preset))
    except (FileNotFoundError, ValueError):
        # random towers without a checkpoint need a vocabulary: any shipped one serves for timing
        assets = Path(ace_lora.__file__).resolve().parent / "assets"
        vocab = sorted(assets.glob("**/*vocab*.txt"))
        if not vocab:
            raise SystemExit(f"no tokenizer vocabulary under {assets}")
        model = build_model(ModelConfig(preset=preset), tokenizer=vocab[0])
    return model.to(device).eval()


def _images(root: Path, n: int, size: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = f"images/{i}.png"
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / path)
        rows.append({"image": path, "split": "test", "label": CLASSES[i % len(CLASSES)]})
    return pd.DataFrame(rows)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=("tiny", "biomedclip"))
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument(
        "--single-images", type=int, default=None, help="images timed one at a time (default: min(--images, 64))"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="evaluate.precision: auto = bf16 on CUDA, fp32 on CPU (bf16 pays on CPUs with AMX)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = _build(args.preset, device)
    size = model.preset.image_size
    results: dict = {
        "preset": args.preset,
        "device": str(device),
        "precision": args.precision,
        "threads": args.threads,
        "images": args.images,
        "batch_size": args.batch_size,
        "image_size": size,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = _images(root, args.images, size)
        single = manifest.iloc[: args.single_images or min(args.images, 64)]
        embed_images(model, manifest.iloc[:2], root, 2, 0, device, precision=args.precision)  # warm-up
        t_batched = _median_time(
            lambda: embed_images(model, manifest, root, args.batch_size, 0, device, precision=args.precision),
            args.repeats,
        )
        t_single = _median_time(
            lambda: embed_images(model, single, root, 1, 0, device, precision=args.precision), args.repeats
        )
        prompts = {c: [f"a chest x-ray image of {c.lower()}.", f"findings suggesting {c.lower()}."] for c in CLASSES}
        cfg = EvaluateConfig(batch_size=args.batch_size, bootstrap=args.bootstrap, precision=args.precision)
        t_eval = _median_time(lambda: evaluate_benchmark(model, _Spec(), manifest, root, prompts, cfg, device), 1)
    results.update(
        {
            "batched_images_per_s": round(len(manifest) / t_batched, 1),
            "single_images_per_s": round(len(single) / t_single, 1),
            "speedup_batched": round((len(manifest) / t_batched) / (len(single) / t_single), 2),
            "evaluate_benchmark_s": round(t_eval, 2),
            "bootstrap": args.bootstrap,
        }
    )
    print(json.dumps(results, indent=2))
    if args.json:
        atomic_write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
