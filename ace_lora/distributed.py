"""Process-group helpers: one code path for 1 or N processes.

Under ``torchrun`` the environment carries ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_distributed`
then joins the process group (NCCL on CUDA, Gloo on CPU). Without them everything degrades to a single process
(rank 0 of 1) and the collectives below become identities, so callers never branch on the process count.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
# CPU flags of native bf16 matrix arithmetic: Intel AMX (Sapphire Rapids+), AVX-512 BF16 (Cooper Lake, AMD Zen 4+),
# Arm BF16 (Graviton3, Neoverse V1+; "Features" line)
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
_warned: set[str] = set()


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: its rank, the process count and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    """Process count announced by ``torchrun`` (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def choose_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: ``cuda:LOCAL_RANK`` when CUDA is available, else CPU. ``cpu``/``cuda`` force one."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device: {preference!r} is not one of auto, cpu, cuda")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device: cuda requested but CUDA is not available")
    return torch.device("cuda", local_rank)


def cpu_bf16_flags(cpuinfo: Path | None = None) -> set[str] | None:
    """The native-bf16 flags (:data:`BF16_CPU_FLAGS`) this CPU advertises; ``None`` where that is unknown (no
    ``/proc/cpuinfo``: not Linux)."""
    try:
        text = (cpuinfo or CPUINFO).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, Arm; every core lists the same
            return set(value.split()) & set(BF16_CPU_FLAGS)
    return None


def warn_if_slow_bf16(device: torch.device | str) -> None:
    """Log once when bf16 autocast is asked for on a CPU without native bf16, where it is slower than fp32."""
    if torch.device(device).type != "cpu" or "cpu" in _warned:
        return
    flags = cpu_bf16_flags()
    if flags is not None and not flags:
        _warned.add("cpu")
        log.warning(
            "precision bf16 on a CPU without native bf16 (no %s in %s; torch CPU capability %s): bf16 "
            "autocast runs several times slower than fp32 here; set train.precision / evaluate.precision "
            "to fp32 or auto",
            "/".join(BF16_CPU_FLAGS),
            CPUINFO,
            torch.backends.cpu.get_cpu_capability(),
        )


def use_bf16(precision: str, device: torch.device | str) -> bool:
    """``precision`` (auto | fp32 | bf16) on ``device``: auto means bf16 on CUDA, fp32 on CPU.

    bf16 on a CPU without native bf16 arithmetic (:func:`cpu_bf16_flags`) logs a warning once: it works, slowly.
    """
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision: {precision!r} is not one of auto, fp32, bf16")
    bf16 = precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda")
    if bf16:
        warn_if_slow_bf16(device)
    return bf16


def autocast(device: torch.device | str, precision: str):
    """bf16 autocast on ``device`` when :func:`use_bf16` says so, else a no-op context."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16(precision, device) else nullcontext()


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the ``torchrun`` process group if there is one; return this process's :class:`DistEnv`.

    Idempotent: a group that is already initialised is reused.
    """
    world = env_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = choose_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def barrier() -> None:
    if is_dist():
        dist.barrier()


def destroy_distributed() -> None:
    """Leave the process group (no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s Python object on every rank (identity for a single process)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _all_reduce_scalar(value: float, op) -> torch.Tensor:
    t = torch.tensor(
        [float(value)],
        dtype=torch.float64,
        device=torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu",
    )
    dist.all_reduce(t, op=op)
    return t


def all_reduce_max(value: float) -> float:
    """Largest of the ranks' scalars (identity for a single process)."""
    if not is_dist():
        return value
    return float(_all_reduce_scalar(value, dist.ReduceOp.MAX).item())


def all_reduce_mean(value: float) -> float:
    """Mean of the ranks' scalars (identity for a single process); NaN/inf on any rank propagate."""
    if not is_dist():
        return value
    return float(_all_reduce_scalar(value, dist.ReduceOp.SUM).item()) / dist.get_world_size()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient for the local slice.

    Every rank computes the same global loss from the gathered tensors, so the gradient of the local slice is
    the sum of the ranks' gradients for it (an all-reduce, then this rank's slice); works on Gloo and NCCL.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # (b, ...) -> (world*b, ...)
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.rank, ctx.size = dist.get_rank(), tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` (equal shapes) along dim 0, keeping the autograd graph.

    Rank r's rows come r-th. Identity for a single process.
    """
    if not is_dist():
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather_nograd(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0 without gradient (labels, metrics)."""
    if not is_dist():
        return tensor
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts, dim=0)
