"""Process-group helpers and the 1-vs-N-process equivalence of training (Gloo, two CPU processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_fakes
from ace_lora import distributed as D
from ace_lora import train as T
from train_support import prepare_tiny_data, read_csv, real_params

pytestmark = pytest.mark.usefixtures("one_thread")

TESTS = Path(__file__).resolve().parent


def run_torchrun(script: str, *args: str, nproc: int = 2, timeout: int = 240) -> None:
    """Run ``tests/<script>`` under ``torchrun --standalone`` with ``nproc`` CPU processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--standalone",
        str(TESTS / script),
        *args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def test_single_process_env(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    env = D.init_distributed("cpu")
    assert (env.rank, env.world_size, env.is_main, env.is_distributed) == (0, 1, True, False)
    assert env.device == torch.device("cpu")
    x = torch.randn(3, 2, requires_grad=True)
    assert D.gather_with_grad(x) is x and D.gather_nograd(x) is x
    assert D.all_reduce_max(2.5) == 2.5 and D.broadcast_object({"a": 1}) == {"a": 1}
    D.barrier()


def test_choose_device():
    assert D.choose_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda", 1) if torch.cuda.is_available() else torch.device("cpu")
    assert D.choose_device("auto", local_rank=1) == expected
    with pytest.raises(ValueError, match="not one of"):
        D.choose_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            D.choose_device("cuda")


def test_gather_with_grad_sums_rank_gradients(tmp_path):
    run_torchrun("_torchrun_gather.py", str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    g = torch.Generator().manual_seed(0)
    full = torch.randn(6, 5, generator=g).requires_grad_(True)
    w = torch.randn(5, 5, generator=g)
    loss = (full @ w @ full.T).logsumexp(-1).mean()
    loss.backward()
    for r in (r0, r1):
        torch.testing.assert_close(r["gathered"], full.detach())
        torch.testing.assert_close(r["loss"], loss.detach())
        assert r["flag"] == 1.0 and r["obj"] == {"r": 0} and r["labels"].flatten().tolist() == [0, 0, 1, 1]
    # every rank computes the same global loss, so the local slice collects the sum (= world x) of the gradients;
    # DDP's average then gives exactly the single-process gradient
    torch.testing.assert_close(r0["grad"], 2 * full.grad[:3])
    torch.testing.assert_close(r1["grad"], 2 * full.grad[3:])


def _write_params(path: Path, params) -> Path:
    from ace_lora.config import to_dict

    path.write_text(json.dumps(to_dict(params)))
    return path


def test_two_processes_match_one_process_on_same_global_batch(tmp_path, monkeypatch):
    """Real tiny model and loss: 2 ranks x batch 4 == 1 process x batch 8 (LoRA, ACE-HGNN, logit scale), 1e-5.

    LoRA dropout is 0 (the ranks' dropout streams differ by design). Plain SGD replaces AdamW here so that the
    weights stay linear in the gradients (AdamW would hide a gradient factor of N and amplify float noise of
    near-zero gradients up to ~lr); the shuffled shards, warm-up/cosine schedule and validation run as usual.
    """
    base = prepare_tiny_data(tmp_path / "data", n_train=32)
    one = real_params(base, lora={"dropout": 0.0}, batch_size=8, epochs=1, max_steps=3, lr=0.5)
    two = real_params(base, lora={"dropout": 0.0}, batch_size=4, epochs=1, max_steps=3, lr=0.5)
    train_fakes.use_sgd(monkeypatch.setattr)
    T.train(one, "ace", tmp_path / "one")
    run_torchrun(
        "_torchrun_train.py", str(_write_params(tmp_path / "two.json", two)), "ace", str(tmp_path / "two"), "--sgd"
    )
    a, b = (
        torch.load(next((tmp_path / d / "checkpoints").glob("*/last.pt")), weights_only=True) for d in ("one", "two")
    )
    assert a["state"]["step"] == b["state"]["step"] == 3 and b["world_size"] == 2
    from ace_lora.config import resolve_method
    from ace_lora.models import build_model

    initial = dict(build_model(*resolve_method(one, "ace")[1:]).named_parameters())
    for name, value in a["trainable"].items():
        assert not torch.equal(value, initial[name].detach()), name  # every trainable tensor was updated
        torch.testing.assert_close(b["trainable"][name], value, rtol=0, atol=1e-5)
    # the global loss and the synchronised gradient norm of every step agree too
    log1, log2 = (read_csv(tmp_path / d / "log.csv") for d in ("one", "two"))
    assert [r["step"] for r in log1] == [r["step"] for r in log2] == ["1", "2", "3"]
    for r1, r2 in zip(log1, log2):
        assert float(r2["loss"]) == pytest.approx(float(r1["loss"]), rel=1e-5)
        assert float(r2["grad_norm"]) == pytest.approx(float(r1["grad_norm"]), rel=1e-4)
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert m2["global_batch"] == m1["global_batch"] == 8
    assert m2["val_best"] == pytest.approx(m1["val_best"], abs=1e-4)


@pytest.mark.parametrize(
    "flags, native",
    [("fpu avx2 fma", False), ("fpu avx512f avx512_bf16 amx_tile", True), ("fpu avx512f amx_bf16", True)],
)
def test_bf16_on_cpu_without_native_bf16_warns_once(tmp_path, monkeypatch, caplog, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    )
    monkeypatch.setattr(D, "CPUINFO", cpuinfo)
    monkeypatch.setattr(D, "_warned", set())
    assert D.cpu_bf16_flags() == ({f for f in flags.split() if f in D.BF16_CPU_FLAGS})
    with caplog.at_level("WARNING", logger="ace_lora.distributed"):
        assert D.use_bf16("fp32", "cpu") is False and D.use_bf16("auto", "cpu") is False
        assert not caplog.records  # fp32 asks for nothing
        assert D.use_bf16("bf16", "cpu") is True and D.use_bf16("bf16", "cpu") is True
    warnings = [r.getMessage() for r in caplog.records]
    if native:
        assert warnings == []
    else:
        assert len(warnings) == 1 and "without native bf16" in warnings[0] and "fp32" in warnings[0]


def test_cpu_bf16_flags_unknown_without_cpuinfo(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(D, "CPUINFO", tmp_path / "absent")
    monkeypatch.setattr(D, "_warned", set())
    assert D.cpu_bf16_flags() is None
    with caplog.at_level("WARNING", logger="ace_lora.distributed"):
        assert D.use_bf16("bf16", "cpu") is True
    assert not caplog.records  # unknown CPU: no claim either way
