"""``torchrun`` worker: gradient of a global loss through ``gather_with_grad`` (``_torchrun_gather.py OUT_DIR``)."""

import sys
from pathlib import Path

import torch

from ace_lora import distributed as D


def main() -> None:
    env = D.init_distributed("cpu")
    g = torch.Generator().manual_seed(0)
    full = torch.randn(env.world_size * 3, 5, generator=g)  # the global batch, same on every rank
    w = torch.randn(5, 5, generator=g)
    local = full[env.rank * 3 : (env.rank + 1) * 3].clone().requires_grad_(True)
    gathered = D.gather_with_grad(local)
    loss = (gathered @ w @ gathered.T).logsumexp(-1).mean()  # every row interacts with every other
    loss.backward()
    labels = D.gather_nograd(torch.full((2, 1), float(env.rank)))
    torch.save(
        {
            "loss": loss.detach(),
            "grad": local.grad,
            "gathered": gathered.detach(),
            "labels": labels,
            "rank": env.rank,
            "world": env.world_size,
            "flag": D.all_reduce_max(float(env.rank)),
            "obj": D.broadcast_object({"r": env.rank}),
        },
        Path(sys.argv[1]) / f"rank{env.rank}.pt",
    )
    D.destroy_distributed()


if __name__ == "__main__":
    main()
