"""Training loop: schedule, shuffling, checkpoints and exact resume, non-finite loss, model selection.

The loop tests run on the contract fakes of ``tests/train_fakes.py`` (milliseconds per step); the tests at the end
go through the real tiny model, loss and a tiny prepared manifest.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train_fakes
from ace_lora import distributed as D
from ace_lora import train as T
from ace_lora.config import Params, build
from train_support import prepare_tiny_data, read_csv, real_params

pytestmark = pytest.mark.usefixtures("one_thread")


def make_params(tmp_path: Path, method: dict | None = None, **train) -> Params:
    cfg = {
        "epochs": 3,
        "batch_size": 8,
        "lr": 0.01,
        "warmup_epochs": 1.0,
        "validation": "mimic",
        "log_every": 1,
        "checkpoint_every": 2,
        "seed": 3,
    }
    cfg.update(train)
    return build(
        Params,
        {
            "paths": {
                "raw": str(tmp_path / "raw"),
                "processed": str(tmp_path / "processed"),
                "results": str(tmp_path / "results"),
            },
            "methods": {"m": method or {}},
            "train": cfg,
        },
    )


@pytest.fixture
def fakes(monkeypatch):
    def install(**kw):
        train_fakes.install(T, patch=monkeypatch.setattr, **kw)

    install()
    return install


def run_dirs(checkpoints: Path) -> list[Path]:
    """The run folders of one method's checkpoint folder."""
    return sorted(d for d in checkpoints.iterdir() if d.is_dir())


def load_ckpt(out: Path, checkpoints: Path | None = None) -> dict:
    """``last.pt`` of the one run under ``out/checkpoints`` (or ``checkpoints``)."""
    (run,) = run_dirs(checkpoints or out / "checkpoints")
    return torch.load(run / "last.pt", map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------ schedule


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 1 / 10),  # warm-up start: the first step already moves
        (4, 5 / 10),
        (9, 1.0),  # peak at the end of warm-up
        (10, 1.0),  # cosine starts at 1
        (60, 0.5),  # cosine midpoint: (110 - 10) / 2 after the warm-up
        (85, 0.5 * (1 + math.cos(math.pi * 0.75))),
        (110, 0.0),  # end = 0
        (200, 0.0),
    ],
)
def test_lr_factor_known_steps(step, expected):
    assert T.lr_factor(step, 10, 110) == pytest.approx(expected, abs=1e-12)


def test_scheduler_steps_per_optimizer_step():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=2.0)
    sched = T.build_scheduler(opt, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[3] == pytest.approx(2.0) and lrs[4] == pytest.approx(2.0)
    assert lrs[8] == pytest.approx(1.0)  # midpoint of the 8 cosine steps
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_plan_schedule(tmp_path):
    cfg = make_params(tmp_path, epochs=5, batch_size=4, grad_accum=2, warmup_epochs=0.5).train
    s = T.plan_schedule(cfg, n_pairs=70, world_size=2)  # 35 per rank -> 8 batches -> 4 steps per epoch
    assert (s.steps_per_epoch, s.total_steps, s.warmup_steps, s.batches_per_epoch) == (4, 20, 2, 8)
    capped = make_params(tmp_path, epochs=5, batch_size=4, max_steps=7).train
    assert T.plan_schedule(capped, 70, 1).total_steps == 7
    with pytest.raises(ValueError, match="no full step"):
        T.plan_schedule(make_params(tmp_path, batch_size=64).train, 70, 2)


# ------------------------------------------------------------------------------------------- sampler


def _order(n, replicas, rank, seed, epoch, start=0):
    s = T.ResumableSampler(range(n), replicas, rank, seed)
    s.set_epoch(epoch)
    s.set_start(start)
    return list(s)


def test_shuffle_differs_between_epochs_and_repeats_for_seed():
    assert _order(50, 1, 0, 1, 0) != _order(50, 1, 0, 1, 1)
    assert _order(50, 1, 0, 1, 3) == _order(50, 1, 0, 1, 3)
    assert _order(50, 1, 0, 1, 0) != _order(50, 1, 0, 2, 0)
    assert sorted(_order(50, 1, 0, 1, 0)) == list(range(50))


def test_ranks_cover_the_single_process_global_batches():
    n, b = 40, 4  # per-process batch b on 2 ranks == batch 2b on one process
    single = _order(n, 1, 0, 7, 2)
    r0, r1 = _order(n, 2, 0, 7, 2), _order(n, 2, 1, 7, 2)
    for k in range(n // (2 * b)):
        assert sorted(r0[k * b : (k + 1) * b] + r1[k * b : (k + 1) * b]) == sorted(single[2 * b * k : 2 * b * (k + 1)])


def test_sampler_start_skips_consumed_indices():
    full = _order(30, 1, 0, 5, 1)
    assert _order(30, 1, 0, 5, 1, start=12) == full[12:]
    s = T.ResumableSampler(range(30), 1, 0, 5)
    s.set_start(12)
    assert len(s) == 18


# ------------------------------------------------------------------------------------------- RNG


def test_rng_round_trip_through_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    T.seed_everything(11)
    state = T.capture_rng()
    torch.save({"rng": [state]}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    T.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"][0])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


# ------------------------------------------------------------------------------------------- loop


def test_train_writes_outputs_and_selects_on_validation(tmp_path, fakes):
    out = tmp_path / "run"
    adapter = T.train(make_params(tmp_path), "m", out)
    assert adapter == out / "adapter" and (adapter / "adapter.pt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 18 and metrics["epochs"] == 3 and metrics["val_metric"] == "val/fake/pair_auroc"
    assert metrics["val_best"] > metrics["val_initial"]
    log = read_csv(out / "log.csv")
    assert [int(r["step"]) for r in log] == list(range(1, 19))
    assert list(log[0]) == list(T.LOG_FIELDS)
    assert float(log[-1]["lr"]) > 0 and all(float(r["pairs_per_s"]) > 0 for r in log)
    val = read_csv(out / "log_val.csv")
    assert [int(r["step"]) for r in val] == [0, 6, 12, 18]
    best = max(val[1:], key=lambda r: float(r["val_metric"]))
    assert metrics["best_step"] == int(best["step"])
    saved = torch.load(adapter / "adapter.pt", weights_only=True)
    assert saved["extra"]["step"] == metrics["best_step"]
    ckpt = load_ckpt(out)
    assert set(ckpt) >= {"trainable", "optimizer", "scheduler", "scaler", "rng", "state"}
    assert ckpt["state"]["step"] == 18 and ckpt["state"]["epoch"] == 3 and ckpt["state"]["batch_in_epoch"] == 0
    assert set(ckpt["trainable"]) == {
        "lora_a_image",
        "lora_b_image",
        "lora_a_text",
        "lora_b_text",
        "hgnn_mix",
        "logit_scale",
    }


def test_log_lines_off_a_terminal(tmp_path, fakes, caplog):
    """Validation scores, plain progress lines (no tqdm carriage returns in a log file) and a summary."""
    caplog.set_level("INFO", logger="ace_lora")
    T.train(make_params(tmp_path, epochs=1), "m", tmp_path / "run")
    text = caplog.text
    assert "validation at step 0 (epoch 0): val/fake/pair_auroc = " in text
    assert "validation at step 6 (epoch 0)" in text and "(best " in text
    assert "train m: step 6/6 (epoch 0) loss " in text and "\r" not in text
    assert "finished run " in text and "6 steps" in text and f"adapter -> {tmp_path / 'run' / 'adapter'}" in text


def test_only_trainable_parameters_change(tmp_path, fakes):
    out = tmp_path / "run"
    T.train(make_params(tmp_path, epochs=1), "m", out)
    weights = load_ckpt(out)["trainable"]
    fresh = train_fakes.FakeModel()
    assert not torch.equal(weights["lora_b_image"], fresh.lora_b_image)  # B left zero
    assert weights["logit_scale"] != fresh.logit_scale


@pytest.mark.parametrize("stop_after", [4, 6, 8])  # mid-epoch, epoch end, mid-epoch of the 2nd epoch
def test_resume_equals_uninterrupted(tmp_path, fakes, stop_after):
    fakes(dropout=0.2)  # the dropout stream must continue exactly too
    params = make_params(tmp_path, epochs=2, grad_accum=1)
    T.train(params, "m", tmp_path / "full")
    T.train(params, "m", tmp_path / "split", stop_after=stop_after)
    assert load_ckpt(tmp_path / "split")["state"]["step"] == stop_after
    assert not (tmp_path / "split" / "metrics.json").exists()
    T.train(params, "m", tmp_path / "split", resume=True)
    a, b = load_ckpt(tmp_path / "full"), load_ckpt(tmp_path / "split")
    for name in a["trainable"]:
        torch.testing.assert_close(b["trainable"][name], a["trainable"][name], rtol=0, atol=1e-6)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 12
    la, lb = read_csv(tmp_path / "full" / "log.csv"), read_csv(tmp_path / "split" / "log.csv")
    assert [(r["step"], r["loss"], r["lr"]) for r in la] == [(r["step"], r["loss"], r["lr"]) for r in lb]
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("full", "split"))
    assert (ma["best_step"], ma["val_best"]) == (mb["best_step"], mb["val_best"])


def test_resume_restores_adapter_deleted_by_pipeline(tmp_path, fakes):
    params = make_params(tmp_path, epochs=2)
    out, ckpts = tmp_path / "train" / "m", tmp_path / "checkpoints" / "m"
    T.train(params, "m", out, checkpoint_dir=ckpts, stop_after=9)
    import shutil

    shutil.rmtree(out)  # DVC / Snakemake remove a stage's outputs before re-running it
    T.train(
        params,
        "m",
        out,
        resume=True,
        checkpoint_dir=ckpts,
        log_path=tmp_path / "plots" / "m.csv",
        metrics_path=tmp_path / "metrics" / "m.json",
    )
    assert (out / "adapter" / "adapter.pt").is_file() and (tmp_path / "metrics" / "m.json").is_file()
    assert (tmp_path / "plots" / "m_val.csv").is_file()
    (run,) = run_dirs(ckpts)
    assert (out / "adapter" / "adapter.pt").read_bytes() == (run / "adapter" / "adapter.pt").read_bytes()
    assert [int(r["step"]) for r in read_csv(tmp_path / "plots" / "m.csv")] == list(range(1, 13))


def test_resume_with_other_layout_starts_fresh(tmp_path, fakes, caplog):
    T.train(make_params(tmp_path), "m", tmp_path / "run", stop_after=3)
    caplog.set_level("INFO", logger="ace_lora")
    T.train(make_params(tmp_path, batch_size=4), "m", tmp_path / "run", resume=True)
    assert "settings differ from the latest run" in caplog.text and "train.batch_size" in caplog.text
    assert len(run_dirs(tmp_path / "run" / "checkpoints")) == 2
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 3 * (48 // 4)


def test_grad_accum_and_clip_run(tmp_path, fakes):
    out = tmp_path / "run"
    T.train(make_params(tmp_path, epochs=1, batch_size=4, grad_accum=3, grad_clip=0.5), "m", out)
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4  # 48 // 4 // 3


def test_bf16_autocast_on_cpu_when_asked(tmp_path, fakes):
    out = tmp_path / "run"
    T.train(make_params(tmp_path, epochs=1, precision="bf16"), "m", out)
    assert math.isfinite(json.loads((out / "metrics.json").read_text())["final_loss"])
    assert D.use_bf16("auto", torch.device("cpu")) is False and D.use_bf16("auto", torch.device("cuda")) is True
    assert D.use_bf16("fp32", torch.device("cuda")) is False and D.use_bf16("bf16", "cpu") is True
    with pytest.raises(ValueError, match="precision"):
        D.use_bf16("fp16", "cpu")


def test_non_finite_loss_stops_with_clear_error(tmp_path, fakes, monkeypatch):
    calls = {"n": 0}
    original = train_fakes.FakeLoss.forward

    def flaky(self, *args):
        calls["n"] += 1
        out = original(self, *args)
        return {"loss": out["loss"] * float("nan")} if calls["n"] == 5 else out

    monkeypatch.setattr(train_fakes.FakeLoss, "forward", flaky)
    out = tmp_path / "run"
    with pytest.raises(T.NonFiniteLossError, match=r"non-finite loss nan at step 5"):
        T.train(make_params(tmp_path, checkpoint_every=2), "m", out)
    ckpt = load_ckpt(out)
    assert ckpt["state"]["step"] == 4  # the last good checkpoint survives
    assert all(torch.isfinite(v).all() for v in ckpt["trainable"].values())


# --------------------------------------------------------------------------------------- run identity


def adapter_bytes(out: Path) -> bytes:
    return (out / "adapter" / "adapter.pt").read_bytes()


def test_parameter_change_trains_anew_and_identical_rerun_reuses(tmp_path, fakes, monkeypatch, caplog):
    caplog.set_level("INFO", logger="ace_lora")
    out = tmp_path / "run"
    T.train(make_params(tmp_path, epochs=1), "m", out, resume=True)
    first, metrics = adapter_bytes(out), json.loads((out / "metrics.json").read_text())
    logs = [(out / n).read_text() for n in ("log.csv", "log_val.csv")]

    class NoTraining:
        def __init__(self, *args, **kw):
            raise AssertionError("an identical finished run must be reused, not trained")

    with monkeypatch.context() as m:
        m.setattr(T, "_Trainer", NoTraining)
        for name in ("adapter", "log.csv", "log_val.csv", "metrics.json"):  # what the engines delete
            target = out / name
            target.unlink() if target.is_file() else __import__("shutil").rmtree(target)
        T.train(make_params(tmp_path, epochs=1, log_every=5, checkpoint_every=3, keep_runs=2), "m", out, resume=True)
    assert f"reusing finished run {metrics['run']}" in caplog.text
    assert adapter_bytes(out) == first and json.loads((out / "metrics.json").read_text()) == metrics
    assert [(out / n).read_text() for n in ("log.csv", "log_val.csv")] == logs

    T.train(make_params(tmp_path, epochs=1, lr=0.02), "m", out, resume=True)
    changed = json.loads((out / "metrics.json").read_text())
    assert adapter_bytes(out) != first and changed["run"] != metrics["run"]
    assert "settings differ from the latest run" in caplog.text and "train.lr" in caplog.text


def test_old_runs_are_pruned_and_runs_record_their_identity(tmp_path, fakes):
    out = tmp_path / "run"
    for lr in (0.01, 0.02, 0.03):
        T.train(make_params(tmp_path, epochs=1, lr=lr, keep_runs=2), "m", out, resume=True)
    runs = run_dirs(out / "checkpoints")
    assert len(runs) == 2
    records = [json.loads((d / "run.json").read_text()) for d in runs]
    assert sorted(r["identity"]["train"]["lr"] for r in records) == [0.02, 0.03]
    assert all(r["status"] == "finished" and r["run"] == d.name for r, d in zip(records, runs))


def test_identity_covers_inputs_and_code_not_logging(tmp_path):
    from ace_lora.config import resolve_method

    (tmp_path / "processed" / "mimic").mkdir(parents=True)
    (tmp_path / "processed" / "mimic" / "manifest.csv").write_text("a\n")

    def fingerprint(**train):
        params = make_params(tmp_path, **train)
        return T.plan_run(
            T.run_identity(params, "m", *resolve_method(params, "m")[1:], 1, False), tmp_path / "ck", resume=True
        ).fingerprint

    base = fingerprint()
    assert fingerprint(log_every=7, checkpoint_every=9, num_workers=2, keep_runs=5) == base
    assert fingerprint(validate_every=2) != base and fingerprint(seed=4) != base
    (tmp_path / "processed" / "mimic" / "manifest.csv").write_text("b\n")
    assert fingerprint() != base


@pytest.mark.parametrize("lr", [1e30, 3e37])  # NaN loss after a few steps; weights at the float32 limit after step 1
def test_diverging_run_leaves_only_finite_checkpoints_and_a_sane_rerun_recovers(tmp_path, fakes, lr):
    out = tmp_path / "run"
    with pytest.raises(T.NonFiniteLossError, match=r"non-finite .* step \d+ .*last good checkpoint: .*step \d+\)"):
        T.train(make_params(tmp_path, lr=lr, checkpoint_every=1), "m", out, resume=True)
    ckpt = load_ckpt(out)
    assert T.all_finite([ckpt["trainable"], ckpt["optimizer"]["state"]])
    (run,) = run_dirs(out / "checkpoints")
    assert json.loads((run / "run.json").read_text())["status"].startswith("diverged")
    with pytest.raises(T.NonFiniteLossError):  # an identical rerun resumes the finite state and diverges again
        T.train(make_params(tmp_path, lr=lr, checkpoint_every=1), "m", out, resume=True)
    T.train(make_params(tmp_path, lr=0.01), "m", out, resume=True)
    assert math.isfinite(json.loads((out / "metrics.json").read_text())["final_loss"])


def test_import_closure_follows_function_local_and_relative_imports(tmp_path):
    from ace_lora import provenance as P

    pkg = tmp_path / "ace_lora"
    files = {
        "__init__.py": "",
        "a.py": "import os\n\ndef f():\n    from ace_lora.b import x\n",
        "b.py": "from .sub import c\n",
        "sub/__init__.py": "",
        "sub/c.py": "from ..d import y\n",
        "d.py": "",
        "unused.py": "",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    assert P.import_closure(["ace_lora.a"], root=pkg) == [
        "ace_lora",
        "ace_lora.a",
        "ace_lora.b",
        "ace_lora.d",
        "ace_lora.sub",
        "ace_lora.sub.c",
    ]
    closure = P.import_closure(T.CODE_ROOTS)
    assert "ace_lora.eval.zeroshot" in closure  # imported inside make_validator only
    assert "ace_lora.provenance" in closure and "ace_lora.models.lora" in closure


# ------------------------------------------------------------------------- real tiny model and data


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return prepare_tiny_data(tmp_path_factory.mktemp("tiny"))


def test_real_resume_equals_uninterrupted(tiny_data, tmp_path):
    """Real tiny model (LoRA dropout 0.1), real loss, prepared images: 8 steps == 3 steps + resume."""
    params = real_params(tiny_data, validate_every=2)  # validations: untrained, end (cheaper)
    T.train(params, "ace", tmp_path / "full")
    T.train(params, "ace", tmp_path / "split", stop_after=3)
    T.train(params, "ace", tmp_path / "split", resume=True)
    a, b = load_ckpt(tmp_path / "full"), load_ckpt(tmp_path / "split")
    assert a["state"]["step"] == b["state"]["step"] == 8
    names = set(a["trainable"])
    assert any("lora_" in n for n in names) and any("hgnn" in n for n in names) and "logit_scale" in names
    for name in names:
        torch.testing.assert_close(b["trainable"][name], a["trainable"][name], rtol=0, atol=1e-6)
    from ace_lora.config import resolve_method
    from ace_lora.models import build_model, load_adapter

    model = load_adapter(tmp_path / "full" / "adapter")
    meta = json.loads((tmp_path / "full" / "adapter" / "adapter.json").read_text())
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert meta["extra"]["step"] == metrics["best_step"] and metrics["val_metric"] == "zeroshot/nih14/auroc"
    untrained = build_model(*resolve_method(params, "ace")[1:])
    assert not torch.equal(model.logit_scale, untrained.logit_scale)


def test_real_export_untrained_and_supplied_adapter(tiny_data, tmp_path):
    from ace_lora.config import resolve_method
    from ace_lora.models import build_model, load_adapter

    params = real_params(
        tiny_data,
        methods={"base": {"train": False}, "copy": {"train": False, "adapter": str(tmp_path / "base" / "adapter")}},
    )
    T.train(params, "base", tmp_path / "base")
    T.train(params, "copy", tmp_path / "copy")
    untrained = build_model(*resolve_method(params, "base")[1:]).adapter_state_dict()
    for d in ("base", "copy"):
        loaded = load_adapter(tmp_path / d / "adapter").adapter_state_dict()
        assert set(loaded) == set(untrained) and all(torch.equal(loaded[k], untrained[k]) for k in loaded)
        assert json.loads((tmp_path / d / "metrics.json").read_text())["trained"] is False
    with pytest.raises(FileNotFoundError, match="does not exist"):
        T.train(
            real_params(tiny_data, methods={"x": {"train": False, "adapter": str(tmp_path / "nope")}}),
            "x",
            tmp_path / "x",
        )


def test_real_missing_training_data_fails_early(tiny_data, tmp_path):
    import dataclasses

    params = real_params(tiny_data)
    params = dataclasses.replace(params, paths=dataclasses.replace(params.paths, processed=str(tmp_path / "none")))
    with pytest.raises(FileNotFoundError, match="prepare mimic"):
        T.train(params, "ace", tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_demo_training_raises_validation_metric(tmp_path):
    """README, "What the demo shows": on the demo-like data a short run beats the untrained model on the validation
    benchmark."""
    base = prepare_tiny_data(tmp_path / "demo", n_train=2000, n_per_class=60)
    params = real_params(
        base,
        lora={"dropout": 0.0},
        batch_size=64,
        epochs=10,
        max_steps=300,
        warmup_epochs=0.5,
        validate_every=100,
        checkpoint_every=1000,
        log_every=50,
    )
    T.train(params, "ace", tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val_best"] > metrics["val_initial"] + 0.05, metrics


# ------------------------------------------------------------------------ faults through the CLI (real tiny)

ROOT = Path(__file__).resolve().parent.parent


def write_params_file(path: Path, params: Params) -> Path:
    from ace_lora.config import to_dict

    path.write_text(json.dumps(to_dict(params)))  # JSON is YAML
    return path


def cli_train(params_file: Path, method: str = "ace") -> subprocess.Popen:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "ace_lora", "--params", str(params_file), "train", method, "--resume"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stage_outputs(results: Path) -> dict:
    """Adapter files, logs (timings dropped) and metrics (timings dropped) of the stage for method ``ace``."""

    def rows(name: str) -> list[dict]:
        rows = read_csv(results / "plots" / "train" / name)
        return [{k: v for k, v in r.items() if k != "pairs_per_s"} for r in rows]

    metrics = json.loads((results / "metrics" / "train" / "ace.json").read_text())
    return {
        "adapter": {p.name: p.read_bytes() for p in (results / "train" / "ace" / "adapter").iterdir()},
        "log": rows("ace.csv"),
        "val": rows("ace_val.csv"),
        "metrics": {k: v for k, v in metrics.items() if k not in ("train_time_s", "pairs_per_s")},
    }


def test_kill_9_mid_epoch_then_resume_equals_uninterrupted(tiny_data, tmp_path):
    """The CLI trainer is killed (SIGKILL) mid-epoch; the engine's rerun ends with the same adapter and logs."""
    from ace_lora.cli import main

    def params_file(name: str) -> Path:
        params = real_params(tiny_data, epochs=4, checkpoint_every=3, validate_every=2)  # 4 steps per epoch
        params = dataclasses.replace(params, paths=dataclasses.replace(params.paths, results=str(tmp_path / name)))
        return write_params_file(tmp_path / f"{name}.yaml", params)

    assert main(["--params", str(params_file("full")), "train", "ace", "--resume"]) == 0
    killed = params_file("killed")
    proc, log_csv = cli_train(killed), tmp_path / "killed" / "plots" / "train" / "ace.csv"
    deadline = time.monotonic() + 240
    while not (log_csv.is_file() and len(log_csv.read_text().splitlines()) > 6):  # past step 6: mid-epoch 2
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (tmp_path / "killed" / "metrics" / "train" / "ace.json").exists()
    assert main(["--params", str(killed), "train", "ace", "--resume"]) == 0
    full, resumed = stage_outputs(tmp_path / "full"), stage_outputs(tmp_path / "killed")
    assert [int(r["step"]) for r in resumed["log"]] == list(range(1, 17))
    assert [int(r["step"]) for r in resumed["val"]] == [0, 8, 16]
    assert resumed == full


def test_second_trainer_is_refused_at_once(tiny_data, tmp_path):
    params_file = write_params_file(tmp_path / "p.yaml", real_params(tiny_data))
    checkpoints = Path(real_params(tiny_data).paths.results) / "checkpoints" / "ace"
    with T.method_lock(checkpoints, D.DistEnv()):
        proc = cli_train(params_file)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert f"{checkpoints} is in use by another trainer (PID {os.getpid()})" in err.strip().splitlines()[-1]
    assert not (Path(real_params(tiny_data).paths.results) / "train" / "ace").exists()


def test_rank_change_starts_fresh(tiny_data, tmp_path, caplog):
    caplog.set_level("INFO", logger="ace_lora")
    out = tmp_path / "run"
    T.train(real_params(tiny_data, epochs=1, validate_every=2), "ace", out, stop_after=2)
    T.train(real_params(tiny_data, epochs=1, validate_every=2, lora={"rank": 2}), "ace", out, resume=True)
    assert "model.lora.rank" in caplog.text
    meta = json.loads((out / "adapter" / "adapter.json").read_text())
    assert meta["model"]["lora"]["rank"] == 2 and meta["extra"]["step"] == 4
