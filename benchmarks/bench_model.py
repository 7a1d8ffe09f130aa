"""Benchmark of the model core: one training step and batched image-embedding throughput.

A training step = both towers (LoRA on) + ACE-HGNN + label-guided InfoNCE + backward + AdamW, with random tower
weights (no checkpoint needed). Reports the median over ``--steps`` timed steps after ``--warmup`` untimed ones,
plus peak memory (CPU: process max RSS from ``resource.getrusage``; CUDA: ``torch.cuda.max_memory_allocated``).

    python benchmarks/bench_model.py                              # paper preset, batch 8 and 16, CPU (+ CUDA)
    python benchmarks/bench_model.py --preset tiny --steps 3      # seconds
    python benchmarks/bench_model.py --device cpu --precision bf16   # CPUs with AMX: 2-3x the fp32 figures
    python benchmarks/bench_model.py --text-nodes content --fill 0.5 # padding columns are not computed
    python benchmarks/bench_model.py --device cuda --precision bf16 --json results/bench.json
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from ace_lora.config import HgnnConfig, ModelConfig
from ace_lora.io import atomic_write_json
from ace_lora.losses import LabelGuidedInfoNCELoss
from ace_lora.models import build_model


def _vocab_folder() -> str:
    folder = Path(tempfile.mkdtemp(prefix="bench_vocab_"))
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"word{i}" for i in range(200)]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    return str(folder)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _batch(model, batch: int, context: int, fill: float, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    p = model.preset
    images = torch.randn(batch, 3, p.image_size, p.image_size, generator=g)
    n_vocab = len(model.tokenizer)
    ids = torch.randint(5, n_vocab, (batch, context), generator=g)
    length = max(2, int(round(context * fill)))
    ids[:, 0] = model.tokenizer.cls_token_id
    ids[:, length - 1] = model.tokenizer.sep_token_id
    ids[:, length:] = 0
    mask = (ids != 0).long()
    labels = torch.randint(0, 2, (batch, 14), generator=g)
    return images.to(device), ids.to(device), mask.to(device), labels.to(device)


def _timed(step, device: torch.device, steps: int, warmup: int) -> list[float]:
    """Seconds of each of ``steps`` calls of ``step()`` after ``warmup`` untimed ones (device synchronised)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def bench_train_step(
    model, loss_fn, batch: int, context: int, fill: float, device: torch.device, autocast, steps: int, warmup: int
) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    images, ids, mask, labels = _batch(model, batch, context, fill, device)
    model.train()
    losses = []

    def step():
        with autocast():
            img, txt = model(images, ids, mask)
        loss = loss_fn(img.float(), txt.float(), model.logit_scale, labels)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))

    times = _timed(step, device, steps, warmup)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "samples_per_s": batch / statistics.median(times),
        "peak_mem_mib": _peak_mib(device),
        "loss": losses[-1],
    }


@torch.no_grad()
def bench_image_embedding(model, batch: int, device: torch.device, autocast, steps: int, warmup: int) -> dict:
    p = model.preset
    images = torch.randn(batch, 3, p.image_size, p.image_size, device=device)
    model.eval()

    def step():
        with autocast():
            model.encode_image(images)

    med = statistics.median(_timed(step, device, steps, warmup))
    return {"batch": batch, "median_s": med, "images_per_s": batch / med, "peak_mem_mib": _peak_mib(device)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="biomedclip", choices=("biomedclip", "tiny"))
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--context", type=int, default=None, help="text length (default: the preset's, 256 for paper)")
    ap.add_argument("--fill", type=float, default=1.0, help="fraction of the context holding tokens (rest = PAD)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--image-batch", type=int, default=32, help="batch of the image-embedding throughput run")
    ap.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CPU, and CUDA as well when available"
    )
    ap.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="auto: fp32 on CPU, fp32 and bf16 autocast on CUDA",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--hgnn", default="both", choices=("both", "image", "text", "none"))
    ap.add_argument(
        "--text-nodes",
        default="all",
        choices=("all", "content"),
        help="hgnn.text_nodes; content (or --hgnn image/none) skips all-padding columns: try --fill 0.5",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.device == "auto" else [args.device]
    cfg = ModelConfig(preset=args.preset, hgnn=HgnnConfig(towers=args.hgnn, text_nodes=args.text_nodes))
    t0 = time.perf_counter()
    model = build_model(cfg, tokenizer=_vocab_folder())
    build_s = time.perf_counter() - t0
    context = args.context or model.preset.context_length
    loss_fn = LabelGuidedInfoNCELoss()
    results = {
        "preset": args.preset,
        "context": context,
        "fill": args.fill,
        "steps": args.steps,
        "hgnn": args.hgnn,
        "text_nodes": args.text_nodes,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "build_s": build_s,
        "trainable": model.parameter_breakdown(),
        "runs": [],
    }
    print(
        f"# {args.preset}: build {build_s:.1f}s, trainable {results['trainable']['total']:,}, "
        f"context {context} (fill {args.fill}), hgnn {args.hgnn}, text nodes {args.text_nodes}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )
    for dev_name in devices:
        device = torch.device(dev_name)
        model.to(device)
        precisions = (
            [args.precision] if args.precision != "auto" else (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
        )
        for prec in precisions:

            def autocast(prec=prec, device=device):
                return torch.autocast(device.type, dtype=torch.bfloat16) if prec == "bf16" else nullcontext()

            for batch in args.batch_sizes:
                r = bench_train_step(
                    model, loss_fn, batch, context, args.fill, device, autocast, args.steps, args.warmup
                )
                r.update(kind="train_step", device=dev_name, precision=prec, batch=batch)
                results["runs"].append(r)
                print(
                    f"train step  {dev_name:4s} {prec:4s} batch {batch:3d}: median {r['median_s']:.3f}s "
                    f"(min {r['min_s']:.3f}s, {r['samples_per_s']:.1f} pairs/s), peak {r['peak_mem_mib']:.0f} MiB",
                    flush=True,
                )
            r = bench_image_embedding(model, args.image_batch, device, autocast, args.steps, args.warmup)
            r.update(kind="image_embedding", device=dev_name, precision=prec)
            results["runs"].append(r)
            print(
                f"image embed {dev_name:4s} {prec:4s} batch {r['batch']:3d}: median {r['median_s']:.3f}s "
                f"({r['images_per_s']:.1f} images/s), peak {r['peak_mem_mib']:.0f} MiB",
                flush=True,
            )
    if args.json:
        atomic_write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
