"""Training-step throughput (pairs/s), peak memory and achieved FLOP/s of a model preset.

Times the step the trainer runs (:class:`ace_lora.train.ContrastiveStep`: both towers with LoRA and ACE-HGNN, the
label-guided InfoNCE loss, backward, AdamW on the trainable parameters) on synthetic batches: random images, random
token ids filling the whole context (the worst case; padding columns are skipped only when no padding position is
a node, ``hgnn.text_nodes: content``; see ``bench_model.py --fill``) and random labels. Towers are random (no
checkpoint), which does not change the cost.

FLOP model (standard counts): a transformer layer's forward costs 2 x [T (4 d^2 + 2 d d_ff) + 2 T^2 d] FLOP for T
tokens of width d (ViT-B/16 at 224: 34.9 GFLOP, BERT-base at 256 tokens: 45.9 GFLOP per pair; heads, patch embedding
and ACE-HGNN are ignored: < 2 %). A training step is counted as 3 x forward, the usual convention; with frozen towers
the backward pass skips the weight-gradient GEMMs, so the work actually executed is closer to 2 x forward — both
figures are reported. Utilisation = achieved / peak (``--peak-gflops``; default 190 / 700 GFLOP/s = fp32 / bf16 on
the 2-thread development CPU, 989e3 for H100 bf16 dense).

    python benchmarks/bench_train.py                        # tiny (batch 8, 16, 64) + biomedclip (batch 8, 16)
    python benchmarks/bench_train.py --preset tiny --batch 64 --steps 20
    python benchmarks/bench_train.py --preset biomedclip --batch 16 --precision bf16   # CPU with AMX
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from ace_lora.config import LossConfig, ModelConfig
from ace_lora.distributed import use_bf16
from ace_lora.losses import LabelGuidedInfoNCELoss
from ace_lora.models import build_model, get_preset
from ace_lora.train import ContrastiveStep

# fp32 / bf16 (AMX) matmul peaks, 2 threads, development machine: the model's GEMM shapes reach 173-229 / 590-830
CPU_PEAK_GFLOPS = {False: 190.0, True: 700.0}
CUDA_PEAK_GFLOPS = {"H100": 989e3, "H200": 989e3, "A100": 312e3}  # bf16 dense tensor-core peaks


class _StandInTokenizer:
    """The model only reads the [SEP] id at build time; batches here are token ids already."""

    sep_token_id = 102
    name_or_path = None

    def __len__(self) -> int:
        return 0


def forward_gflop_per_pair(preset_name: str) -> dict[str, float]:
    """Forward GFLOP per image-report pair of each tower (transformer layers only)."""
    p = get_preset(preset_name)

    def tower(tokens: int, width: int, ff: int, layers: int) -> float:
        return layers * 2 * (tokens * (4 * width**2 + 2 * width * ff) + 2 * tokens**2 * width) / 1e9

    image = tower(p.image_tokens, p.vision_width, 4 * p.vision_width, p.vision_layers)
    text = tower(p.context_length, p.text_width, p.text_intermediate, p.text_layers)
    return {"image": image, "text": text, "total": image + text}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bench(preset: str, batch: int, steps: int, warmup: int, device: torch.device, bf16: bool, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model_cfg = ModelConfig(preset=preset, init_seed=seed)
    model = build_model(model_cfg, LossConfig(), tokenizer=_StandInTokenizer()).to(device)
    model.train()
    step_module = ContrastiveStep(model, LabelGuidedInfoNCELoss(label_guided=True))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01)
    p = model.preset
    images = torch.randn(batch, 3, p.image_size, p.image_size, device=device)
    ids = torch.randint(1000 if p.vocab_size > 2000 else 5, p.vocab_size, (batch, p.context_length), device=device)
    ids[:, 0], ids[:, -1] = 2 if preset == "tiny" else 101, model.sep_token_id
    mask = torch.ones_like(ids)
    labels = (torch.rand(batch, 14, device=device) < 0.2).float()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = _peak_rss_mib()
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = step_module(images, ids, mask, labels)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    fwd = forward_gflop_per_pair(preset)["total"] * batch
    out = {
        "preset": preset,
        "batch": batch,
        "device": str(device),
        "precision": "bf16" if bf16 else "fp32",
        "threads": torch.get_num_threads(),
        "steps": steps,
        "step_s_median": step_s,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "pairs_per_s": batch / step_s,
        "trainable_params": sum(t.numel() for t in trainable),
        "forward_gflop_per_step": fwd,
        "achieved_gflops_3x": 3 * fwd / step_s,
        "achieved_gflops_2x": 2 * fwd / step_s,
    }
    if device.type == "cuda":
        out["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        out["peak_rss_mib"] = _peak_rss_mib()
        out["peak_rss_mib_before"] = rss0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", nargs="*", default=None, help="presets (default: tiny and biomedclip)")
    ap.add_argument("--batch", nargs="*", type=int, default=None, help="batch sizes (default per preset)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 10 tiny, 3 biomedclip)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="train.precision: auto = bf16 on CUDA, fp32 on CPU (bf16 pays on CPUs with AMX)",
    )
    ap.add_argument("--peak-gflops", type=float, default=None, help="peak for the utilisation column")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    bf16 = use_bf16(args.precision, device)
    peak = args.peak_gflops
    if peak is None:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
        peak = (
            next((v for k, v in CUDA_PEAK_GFLOPS.items() if k in name), None)
            if device.type == "cuda"
            else CPU_PEAK_GFLOPS[bf16]
        )
    defaults = {"tiny": [8, 16, 64], "biomedclip": [8, 16] if device.type == "cpu" else [16, 64, 128]}
    results = []
    for preset in args.preset or ["tiny", "biomedclip"]:
        for batch in args.batch or defaults[preset]:
            steps = args.steps or (10 if preset == "tiny" or device.type == "cuda" else 3)
            r = bench(preset, batch, steps, args.warmup, device, bf16)
            r["peak_gflops"] = peak
            r["utilisation_3x"] = r["achieved_gflops_3x"] / peak if peak else None
            results.append(r)
            mem = r.get("peak_mem_mib", r.get("peak_rss_mib"))
            print(
                f"{preset:10s} b={batch:<4d} {r['precision']} {device.type}: {r['step_s_median']:.3f} s/step "
                f"[{r['step_s_min']:.3f}-{r['step_s_max']:.3f}]  {r['pairs_per_s']:.1f} pairs/s  "
                f"{r['achieved_gflops_3x']:.1f} GFLOP/s (3x; 2x: {r['achieved_gflops_2x']:.1f})  "
                f"util {100 * (r['utilisation_3x'] or 0):.1f} %  peak mem {mem:.0f} MiB",
                flush=True,
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "machine": platform.platform(),
                    "python": sys.version.split()[0],
                    "torch": torch.__version__,
                    "results": results,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
