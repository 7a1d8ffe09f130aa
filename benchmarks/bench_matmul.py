"""bf16 against fp32 matrix-product rate of this CPU: does bf16 autocast pay here?

One ViT-B MLP product at batch 8 (1576x768 by 768x3072), one thread, GFLOP per CPU-second of this process (robust
on a shared machine). On a CPU with AMX bf16 is several times faster than fp32; without native bf16 (no
``amx_bf16`` / ``avx512_bf16`` in /proc/cpuinfo) several times slower. Emulate such a CPU on an AMX machine:

    python benchmarks/bench_matmul.py
    ONEDNN_MAX_CPU_ISA=AVX512_CORE python benchmarks/bench_matmul.py     # oneDNN without AMX and AVX-512 BF16
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from ace_lora.distributed import cpu_bf16_flags


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[1576, 768, 3072], metavar=("M", "K", "N"))
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    m, k, n = args.shape
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = {
        "shape": args.shape,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_flags": sorted(cpu_bf16_flags() or []),
        "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
    }
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        for _ in range(3):
            x @ y
        start = time.process_time()
        for _ in range(args.repeats):
            x @ y
        seconds = (time.process_time() - start) / args.repeats
        out[f"{str(dtype).split('.')[1]}_gflops_per_cpu_s"] = round(2 * m * k * n / seconds / 1e9, 1)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
