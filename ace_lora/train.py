"""Training (docs/method.md#training): one code path for 1 or N processes, with runs identified by everything
that determines them.

``train(params, method, out_dir)`` adapts the method's model on the MIMIC-CXR training pairs with the label-guided
InfoNCE loss, selects the best adapter on the validation set (never a test benchmark) and writes::

    out_dir/adapter/                 best adapter (save_adapter format), replaced atomically
    log_path        (log.csv)        one row every ``log_every`` optimizer steps
    <log_path stem>_val.csv          one row per validation (step 0 = the untrained model)
    metrics_path    (metrics.json)   summary, with the run id and fingerprint
    checkpoint_dir/train.lock        held (flock) by the one trainer of this method
    checkpoint_dir/<run id>/         one folder per run: last.pt (resumable state, logs included), adapter/ (best
                                     so far), run.json (the run's full identity and status)

``checkpoint_dir``, ``log_path`` and ``metrics_path`` default to ``out_dir/checkpoints``, ``out_dir/log.csv`` and
``out_dir/metrics.json``; the pipeline keeps checkpoints outside ``out_dir`` because DVC and Snakemake delete a
stage's outputs before re-running it. The stage outputs are always rewritten whole from the run folder, so a killed
and rerun training ends with the same adapter and the same complete logs.

A run's id is the start of the sha256 of :func:`run_identity`: the resolved settings that can change its numbers,
content hashes of the prepared data it reads and of its code. With ``resume=True`` an unfinished run of the same id
continues exactly where it stopped, a finished one is reused (nothing trained), and anything else trains from
scratch, logging which settings differ from the latest previous run. Only finite weights and optimizer states are
ever checkpointed, so a diverging run (NaN) never poisons a rerun. The ``train.keep_runs`` most recently updated
runs of a method are kept; older run folders are deleted when a run starts.

Under ``torchrun`` every process runs this same function: the process group is joined, the model and loss run inside
one DDP-wrapped module (so the gradients of every trainable parameter, logit scale included, are averaged), each rank
reads its shard of the same shuffled order, and the loss gathers features and labels across ranks. With ``B`` pairs
per process and ``N`` processes the N-process gradient equals the single-process gradient on the same ``N*B`` pairs,
with no extra loss scaling: rank r's loss ``L_r`` is the mean over its rows against all gathered columns, so the
global loss is ``L = mean_r L_r``; the gather's backward sums every rank's column gradient into the local slice, so
the ranks' gradients add up to ``d(sum_r L_r) = N dL``, and DDP's average divides by ``N``. (A loss that computes
the whole global ``L`` on every rank gives ``N dL`` the same way.) ``tests/test_distributed.py`` checks it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import functools
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ace_lora import distributed as D
from ace_lora import provenance as P
from ace_lora.config import LossConfig, ModelConfig, Params, TrainConfig, resolve_method, to_dict
from ace_lora.io import atomic_dir, atomic_write, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

LOG_FIELDS = ("step", "epoch", "loss", "lr", "logit_scale", "grad_norm", "pairs_per_s")
VAL_FIELDS = ("step", "epoch", "val_metric")


class NonFiniteLossError(FloatingPointError):
    """The training loss or weights became NaN or infinite; the last (finite) checkpoint is kept."""


# --------------------------------------------------------------------------------------- schedule


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step + 1`` (``step`` steps done).

    Linear warm-up ``(step+1)/warmup`` reaching 1 at ``warmup-1``, then a cosine from 1 at ``warmup`` to 0 at
    ``total_steps``.
    """
    if step >= total_steps:
        return 0.0
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / span))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over :func:`lr_factor`, stepped once per optimizer step."""

    def factor(step: int) -> float:
        return lr_factor(step, warmup_steps, total_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass(frozen=True)
class Schedule:
    """Step counts of a run."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    batches_per_epoch: int  # micro-batches per process actually consumed per epoch


def plan_schedule(cfg: TrainConfig, n_pairs: int, world_size: int) -> Schedule:
    """Steps per epoch, total and warm-up steps for ``n_pairs`` training pairs on ``world_size`` processes."""
    per_rank = n_pairs // world_size
    batches = per_rank // cfg.batch_size
    steps_per_epoch = batches // cfg.grad_accum
    if steps_per_epoch < 1:
        raise ValueError(
            f"train: {n_pairs} training pairs give no full step with batch_size {cfg.batch_size} x "
            f"grad_accum {cfg.grad_accum} x {world_size} process(es)"
        )
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    return Schedule(steps_per_epoch, total, warmup, steps_per_epoch * cfg.grad_accum)


# ---------------------------------------------------------------------------------------- sampler


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffle, seed, drop_last, ``set_epoch``) that can start mid-epoch.

    A single process uses it too, with ``num_replicas=1``, so the shuffled order means the same thing for 1 or N
    processes: rank r reads every N-th index of the epoch's permutation, and consecutive batches of the N ranks
    together cover the same pairs as one process's N-times larger batch.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of this rank's order (already consumed) in the next epoch."""
        self.start = start

    def __iter__(self):
        return iter(list(super().__iter__())[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


# ----------------------------------------------------------------------------------- RNG, checkpoint


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    """This process's RNG states as tensors and primitive containers (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "state": list(state), "gauss_next": gauss_next},
    }


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    n = rng["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = rng["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters (the adapter), detached on CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(state):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise ValueError(
            f"checkpoint does not match the model's trainable parameters: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    with torch.no_grad():
        for n, p in params.items():
            if p.shape != state[n].shape:
                raise ValueError(f"checkpoint {n}: shape {tuple(state[n].shape)} != model {tuple(p.shape)}")
            p.copy_(state[n])


def save_adapter_atomic(model: nn.Module, adapter_dir: Path, extra: dict) -> None:
    """``save_adapter`` into a temporary folder, then swap it in place of ``adapter_dir``."""
    from ace_lora.models import save_adapter

    with atomic_dir(adapter_dir) as tmp:
        save_adapter(model, tmp, extra)


# ------------------------------------------------------------------------------------- components


class ContrastiveStep(nn.Module):
    """Model + loss in one module, so DDP sees every trainable parameter (logit scale included) in its forward."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        image_emb, text_emb = self.model(images, input_ids, attention_mask)  # (B, D), (B, D)
        return self.loss_fn(image_emb.float(), text_emb.float(), self.model.logit_scale, labels)


def finding_columns() -> list[str]:
    """The 14 CheXpert-labeller finding columns of the MIMIC manifest (declared in the registry)."""
    from ace_lora.registry import CHEXPERT_FINDINGS

    return list(CHEXPERT_FINDINGS)


def read_pairs_manifest(params: Params, split: str):
    """The MIMIC pair manifest restricted to ``split``, with its folder."""
    import pandas as pd

    root = Path(params.paths.processed) / "mimic"
    path = root / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training pairs not prepared (run `python -m ace_lora prepare mimic`)")
    manifest = pd.read_csv(path)
    missing = [c for c in ["image", "split", "text", *finding_columns()] if c not in manifest.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    part = manifest[manifest["split"] == split].reset_index(drop=True)
    if part.empty:
        raise ValueError(f"{path}: no rows with split == {split!r}")
    return part, root


def make_pair_dataset(params: Params, model: nn.Module, split: str, train: bool) -> Dataset:
    from ace_lora.data.dataset import PairDataset

    manifest, root = read_pairs_manifest(params, split)
    return PairDataset(manifest, root, model.image_transform(train=train), model.tokenize, finding_columns())


def build_components(model_cfg: ModelConfig, loss_cfg: LossConfig) -> tuple[nn.Module, nn.Module]:
    """The method's model and its loss."""
    from ace_lora.losses import LabelGuidedInfoNCELoss
    from ace_lora.models import build_model

    return build_model(model_cfg, loss_cfg), LabelGuidedInfoNCELoss(label_guided=loss_cfg.label_guided)


# ------------------------------------------------------------------------------------- validation

Validator = Callable[[nn.Module], float]


def make_validator(params: Params, model: nn.Module, device: torch.device, bf16: bool) -> tuple[str, Validator]:
    """The model-selection metric ``(key, fn(model) -> value)``, higher is better; fails early if data is missing.

    ``train.validation`` names a validation benchmark (never a test one): ``nih14`` (the reference's: first 20 %
    of the NIH test list) or ``mimic`` (the MIMIC-CXR validate split). Both are scored alike: zero-shot multi-label
    macro AUROC over their findings with the prompts of ``{results}/prompts.json`` (built from ``params.prompts``
    when the file is absent), without bootstrap.
    """
    from ace_lora.data.benchmarks import load_benchmark
    from ace_lora.eval.zeroshot import evaluate_benchmark

    name = params.train.validation
    processed = Path(params.paths.processed)
    spec, manifest = load_benchmark(name, processed)  # fail now, not after the first epoch
    if spec.task != "multilabel":
        raise ValueError(f"train.validation: {name} is a {spec.task} benchmark; expected a multi-label one")
    prompts = validation_prompts(params, spec)
    eval_cfg = dataclasses.replace(params.evaluate, bootstrap=0, precision="bf16" if bf16 else "fp32")
    key = f"zeroshot/{name}/auroc"

    def validate(m: nn.Module) -> float:
        metrics = evaluate_benchmark(m, spec, manifest, spec.root(processed), prompts, eval_cfg, device).metrics
        if key not in metrics:
            raise KeyError(f"evaluate_benchmark({name}) returned no {key}: {sorted(metrics)}")
        return float(metrics[key])

    return key, validate


def validation_prompts(params: Params, spec) -> dict[str, list[str]]:
    """``{class: [prompts]}`` of the validation benchmark from ``{results}/prompts.json``, else from params."""
    from ace_lora.prompts import build_prompts, read_prompts

    path = Path(params.paths.results) / "prompts.json"
    if path.is_file():
        return read_prompts(path, spec.name, spec.classes)
    return build_prompts(params.prompts, [spec.name])[spec.name]


# ------------------------------------------------------------------------------------------ run identity

#: Settings that cannot change a run's numbers: they stay out of its identity (a resume may change them).
NOT_IN_IDENTITY = ("log_every", "checkpoint_every", "num_workers", "pin_memory", "device", "processes", "keep_runs")
#: The code a training run executes: these modules and everything they import from ace_lora.
CODE_ROOTS = ("ace_lora.__main__", "ace_lora.cli", "ace_lora.train")


def run_identity(
    params: Params, method: str, model_cfg: ModelConfig, loss_cfg: LossConfig, world_size: int, bf16: bool
) -> dict:
    """Everything that determines a training run's result, as plain data (``run.json``).

    The resolved method settings, the training recipe (less :data:`NOT_IN_IDENTITY`, plus the process count and the
    resolved precision), the model-selection settings (the ensemble and the validation prompts themselves), content
    hashes of the prepared inputs it reads, and the hash of its code (:data:`CODE_ROOTS`' import closure). The
    validation batch size is left out like the device: the demo's validation embeddings are bit-identical for
    ``evaluate.batch_size`` 64 and 7 on CPU (a GPU may differ in float rounding only).
    """
    from ace_lora.data.benchmarks import get_benchmark

    processed = Path(params.paths.processed)
    train_cfg = {k: v for k, v in to_dict(params.train).items() if k not in NOT_IN_IDENTITY}
    name = params.train.validation
    return {
        "method": method,
        "model": to_dict(model_cfg),
        "loss": to_dict(loss_cfg),
        "train": {**train_cfg, "precision": "bf16" if bf16 else "fp32", "world_size": world_size},
        "selection": {"ensemble": params.evaluate.ensemble, "prompts": validation_prompts(params, get_benchmark(name))},
        "inputs": {
            "processed/mimic": P.hash_path(processed / "mimic"),
            f"processed/{name}": P.hash_path(processed / name),
        },
        "code": code_fingerprint(),
    }


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the source of :data:`CODE_ROOTS`' import closure (once per process: the code cannot change under it)."""
    return P.code_hash(P.import_closure(CODE_ROOTS))


@dataclass(frozen=True)
class RunPlan:
    """Which run folder this training uses and how: ``reuse`` (finished), ``resume`` (unfinished) or ``fresh``."""

    fingerprint: str
    run_dir: Path
    mode: str
    reason: str

    @property
    def run_id(self) -> str:
        return self.fingerprint[:16]


def _read_run_record(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None


def _previous_runs(checkpoint_dir: Path) -> list[Path]:
    """Run folders under ``checkpoint_dir``, least recently updated first."""
    runs = [d for d in checkpoint_dir.glob("*") if d.is_dir() and (d / "run.json").is_file()]
    return sorted(runs, key=lambda d: (d / "run.json").stat().st_mtime_ns)


def _why_fresh(resume: bool, identity: dict, plan_dir: Path, checkpoint_dir: Path) -> str:
    if not resume:
        return "--resume not given"
    others = [d for d in _previous_runs(checkpoint_dir) if d != plan_dir]
    if plan_dir.is_dir():
        return f"run {plan_dir.name} has no checkpoint yet"
    if not others:
        return f"no previous run in {checkpoint_dir}"
    latest = others[-1]
    keys = P.differing_keys(identity, (_read_run_record(latest) or {}).get("identity", {}))
    shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
    return f"settings differ from the latest run {latest.name}: {shown or 'unreadable run.json'}"


def plan_run(identity: dict, checkpoint_dir: Path, resume: bool) -> RunPlan:
    """Choose the run folder ``checkpoint_dir/<fingerprint[:16]>`` and whether to reuse, resume or start it afresh."""
    fingerprint = P.hash_json(identity)
    run_dir = checkpoint_dir / fingerprint[:16]
    last = run_dir / "last.pt"
    if resume and last.is_file():
        finished = torch.load(last, map_location="cpu", weights_only=True)["state"].get("finished", False)
        if finished:
            return RunPlan(fingerprint, run_dir, "reuse", "an identical run finished")
        return RunPlan(fingerprint, run_dir, "resume", "an identical run stopped before its end")
    return RunPlan(fingerprint, run_dir, "fresh", _why_fresh(resume, identity, run_dir, checkpoint_dir))


def prune_runs(checkpoint_dir: Path, keep: int, current: Path) -> list[Path]:
    """Delete the least recently updated run folders beyond ``keep`` (the current run counts and stays)."""
    others = [d for d in _previous_runs(checkpoint_dir) if d != current]
    doomed = others[: max(len(others) - (keep - 1), 0)]
    for d in doomed:
        shutil.rmtree(d, ignore_errors=True)
    return doomed


def write_run_record(plan: RunPlan, identity: dict, status: str, summary: dict | None = None) -> None:
    """``run.json``: the full identity, so a user can see what a run was, and where it stands."""
    atomic_write_json(
        plan.run_dir / "run.json",
        {
            "run": plan.run_id,
            "fingerprint": plan.fingerprint,
            "status": status,
            "summary": summary,
            "identity": identity,
        },
    )


# ------------------------------------------------------------------------------------------- one trainer


class RunLockedError(RuntimeError):
    """Another trainer holds the method's checkpoint folder."""


@contextlib.contextmanager
def method_lock(checkpoint_dir: Path, env: D.DistEnv) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``checkpoint_dir/train.lock`` for the whole run (rank 0 takes it).

    The lock is per method, not per run: two trainers of one method write the same stage outputs (adapter, logs,
    metrics) and prune the same run folders even when their settings differ. The kernel drops it when the holder
    dies, kill -9 included, so a stale lock file blocks nothing.
    """
    handle, error = None, None
    if env.is_main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = checkpoint_dir / "train.lock"
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")  # for the message of a refused second trainer
            handle.flush()
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            error = (
                f"{checkpoint_dir} is in use by another trainer (PID {holder}); wait for it to finish or stop "
                "it, then rerun"
            )
    error = D.broadcast_object(error)
    if error:
        raise RunLockedError(error)
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


# ------------------------------------------------------------------------------------------ logging


class CsvLog:
    """A CSV log rewritten whole from ``rows`` (the checkpoint's record), then extended row by row (rank 0).

    ``rows`` is the list stored in the checkpoint: after a kill the rerun rewrites the file from it, so the file
    never holds rows of steps the resumed run repeats, nor lacks any of the steps it keeps.
    """

    def __init__(self, path: Path, fields: tuple[str, ...], rows: list, enabled: bool = True):
        self.path, self.fields, self.rows, self.enabled = path, fields, rows, enabled
        if enabled:
            atomic_write(path, lambda tmp: self._write(tmp, "w", [fields, *rows]))

    def _write(self, path: Path, mode: str, rows: list) -> None:
        with path.open(mode, newline="") as f:
            csv.writer(f).writerows(rows)

    def write(self, **row) -> None:
        values = [row[k] for k in self.fields]
        self.rows.append(values)
        if self.enabled:
            self._write(self.path, "a", [values])


class Progress:
    """A tqdm bar on a terminal; elsewhere (log files) a plain log line every ``every`` steps or ``seconds``."""

    def __init__(self, label: str, total: int, initial: int, enabled: bool, seconds: float = 60.0):
        self.label, self.total, self.seconds, self.enabled = label, total, seconds, enabled
        self.every = max(total // 20, 1)
        self.bar, self.last_t, self.start_t, self.start_step = None, time.monotonic(), time.monotonic(), initial
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=label, unit="step", dynamic_ncols=True)

    def update(self, step: int, epoch: int, loss: float, lr: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", epoch=epoch)
            return
        now = time.monotonic()
        if step % self.every and now - self.last_t < self.seconds and step != self.total:
            return
        self.last_t = now
        rate = (step - self.start_step) / max(now - self.start_t, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        log.info(
            "%s: step %d/%d (epoch %d) loss %.4f lr %.2e, %.2f steps/s, about %.0f s left",
            self.label,
            step,
            self.total,
            epoch,
            loss,
            lr,
            rate,
            eta,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------- training


@dataclass
class _State:
    """Where the run stands; everything here goes into the checkpoint (the logs included)."""

    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of ``epoch`` already consumed (per process)
    step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    best_step: int | None = None
    initial_metric: float | None = None
    last_validated_step: int | None = None
    last_loss: float | None = None
    train_time_s: float = 0.0
    pairs_seen: int = 0
    log_rows: list = dataclasses.field(default_factory=list)  # LOG_FIELDS values per logged step
    val_rows: list = dataclasses.field(default_factory=list)  # VAL_FIELDS values per validation
    finished: bool = False
    summary: dict | None = None  # the metrics file's content, once finished

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TrainPaths:
    out_dir: Path
    checkpoint_dir: Path  # the method's folder; each run has its own sub-folder
    log_path: Path
    metrics_path: Path

    @property
    def adapter(self) -> Path:
        return self.out_dir / "adapter"

    @property
    def val_log_path(self) -> Path:
        return self.log_path.with_name(f"{self.log_path.stem}_val.csv")


def train(
    params: Params,
    method: str,
    out_dir: Path,
    resume: bool = False,
    *,
    checkpoint_dir: Path | None = None,
    log_path: Path | None = None,
    metrics_path: Path | None = None,
    stop_after: int | None = None,
) -> Path:
    """Train ``method`` (or export its untrained/supplied adapter); return ``out_dir/adapter``.

    Each run lives in ``checkpoint_dir/<run id>/`` (``last.pt``, the best ``adapter/``, ``run.json``), the run id
    being the first 16 hex digits of the fingerprint of :func:`run_identity`. ``resume=True`` continues an unfinished
    run with the same fingerprint exactly where it stopped, and reuses a finished one (outputs rewritten from it,
    nothing trained); anything else starts afresh and logs why. ``stop_after`` stops (after writing a checkpoint)
    once that many optimizer steps are done in total, without changing the schedule: a preemption, for tests.
    """
    out_dir = Path(out_dir)
    paths = TrainPaths(
        out_dir,
        Path(checkpoint_dir) if checkpoint_dir else out_dir / "checkpoints",
        Path(log_path) if log_path else out_dir / "log.csv",
        Path(metrics_path) if metrics_path else out_dir / "metrics.json",
    )
    method_cfg, model_cfg, loss_cfg = resolve_method(params, method)
    if method_cfg.train:
        read_pairs_manifest(params, "train")  # fail before creating anything when the data is missing
    owns_group = not D.is_dist()
    env = D.init_distributed(params.train.device)
    try:
        with method_lock(paths.checkpoint_dir, env):
            if not method_cfg.train:
                return _export_adapter(method_cfg, model_cfg, loss_cfg, method, paths, env)
            bf16 = D.use_bf16(params.train.precision, env.device)
            identity, plan = None, None
            if env.is_main:
                identity = run_identity(params, method, model_cfg, loss_cfg, env.world_size, bf16)
                plan = plan_run(identity, paths.checkpoint_dir, resume)
                _start_run(plan, identity, method, paths.checkpoint_dir, params.train.keep_runs)
            identity, plan = D.broadcast_object((identity, plan))
            if plan.mode == "reuse":
                return _reuse_run(plan, paths, env)
            return _Trainer(params, method, model_cfg, loss_cfg, paths, env, plan, identity).run(stop_after)
    finally:
        if owns_group:
            D.destroy_distributed()


def _start_run(plan: RunPlan, identity: dict, method: str, checkpoint_dir: Path, keep_runs: int) -> None:
    """Log the plan, prepare the run folder and prune old runs (rank 0)."""
    if plan.mode == "reuse":
        log.info("train %s: reusing finished run %s (%s)", method, plan.run_id, plan.run_dir)
        os.utime(plan.run_dir / "run.json")  # recently used: the last to be pruned
    elif plan.mode == "resume":
        log.info("train %s: resuming run %s (%s)", method, plan.run_id, plan.run_dir)
        write_run_record(plan, identity, "running")
    else:
        log.info("train %s: training run %s from scratch: %s", method, plan.run_id, plan.reason)
        shutil.rmtree(plan.run_dir, ignore_errors=True)  # a stale or unrequested previous state of this run
        plan.run_dir.mkdir(parents=True)
        write_run_record(plan, identity, "running")
    for d in prune_runs(checkpoint_dir, keep_runs, plan.run_dir):
        log.info("train %s: removed old run %s (train.keep_runs = %d)", method, d.name, keep_runs)
    for legacy in ("last.pt", "best.pt"):  # the single-run layout of earlier versions, never resumable now
        (checkpoint_dir / legacy).unlink(missing_ok=True)


def _publish(run_dir: Path, paths: TrainPaths, state: dict) -> None:
    """Write the stage outputs from a run folder and its checkpoint state: adapter, logs, metrics (rank 0)."""
    with atomic_dir(paths.adapter) as tmp:
        shutil.copytree(run_dir / "adapter", tmp, dirs_exist_ok=True)
    CsvLog(paths.log_path, LOG_FIELDS, state["log_rows"])
    CsvLog(paths.val_log_path, VAL_FIELDS, state["val_rows"])
    atomic_write_json(paths.metrics_path, state["summary"])


def _reuse_run(plan: RunPlan, paths: TrainPaths, env: D.DistEnv) -> Path:
    """A finished identical run: rewrite the stage outputs from it, train nothing."""
    if env.is_main:
        state = torch.load(plan.run_dir / "last.pt", map_location="cpu", weights_only=True)["state"]
        _publish(plan.run_dir, paths, state)
        log.info("reused run %s: adapter -> %s, metrics -> %s", plan.run_id, paths.adapter, paths.metrics_path)
    D.barrier()
    return paths.adapter


def _export_adapter(method_cfg, model_cfg, loss_cfg, method: str, paths: TrainPaths, env: D.DistEnv) -> Path:
    """``train: false``: save the supplied adapter (folder or official ``.pt``) or the untrained one."""
    adapter_dir = paths.adapter
    if env.is_main:
        from ace_lora import models as M

        source = method_cfg.adapter
        extra = {"method": method, "trained": False, "source": source}
        if source is None:
            save_adapter_atomic(build_components(model_cfg, loss_cfg)[0], adapter_dir, extra)
        elif Path(source).is_dir():  # one of our adapter folders, with its own stored configuration
            save_adapter_atomic(M.load_adapter(Path(source)), adapter_dir, extra)
        elif Path(source).is_file():  # the official ACE_LoRA.pt
            with atomic_dir(adapter_dir) as tmp:
                M.import_official_checkpoint(
                    Path(source), tmp, preset=model_cfg.preset, model_cfg=model_cfg, loss_cfg=loss_cfg
                )
        else:
            raise FileNotFoundError(f"methods.{method}.adapter: {source} does not exist")
        atomic_write_text(
            paths.metrics_path, json.dumps({"trained": False, "steps": 0, "source": source}, indent=2) + "\n"
        )
        CsvLog(paths.log_path, LOG_FIELDS, [])  # empty logs: every method has the same outputs
        CsvLog(paths.val_log_path, VAL_FIELDS, [])
    D.barrier()
    return adapter_dir


def all_finite(obj) -> bool:
    """True when every floating-point tensor in ``obj`` (a tensor, or nested dicts, lists, tuples) is finite."""
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return all(all_finite(v) for v in obj)
    return True


class _Trainer:
    def __init__(
        self,
        params: Params,
        method: str,
        model_cfg: ModelConfig,
        loss_cfg: LossConfig,
        paths: TrainPaths,
        env: D.DistEnv,
        plan: RunPlan,
        identity: dict,
    ):
        self.params, self.cfg, self.method = params, params.train, method
        self.paths, self.env, self.device, self.plan, self.identity = paths, env, env.device, plan, identity
        self.bf16 = D.use_bf16(self.cfg.precision, self.device)
        self.ckpt_path, self.best_dir = plan.run_dir / "last.pt", plan.run_dir / "adapter"
        self.saved_step: int | None = None  # step of the last checkpoint written or loaded (all finite)
        cfg = self.cfg

        seed_everything(cfg.seed)  # identical initialisation on every rank (DDP also broadcasts rank 0's)
        self.model, self.loss_fn = build_components(model_cfg, loss_cfg)
        self.model.to(self.device)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not self.trainable:
            raise ValueError(
                f"methods.{method}: nothing to train (LoRA off, no ACE-HGNN, fixed logit scale); set train: false"
            )
        self.step_module = ContrastiveStep(self.model, self.loss_fn)
        if env.is_distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.engine = DDP(
                self.step_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,
                find_unused_parameters=False,
            )
        else:
            self.engine = self.step_module

        self.dataset = make_pair_dataset(params, self.model, "train", train=True)
        self.schedule = plan_schedule(cfg, len(self.dataset), env.world_size)
        self.sampler = ResumableSampler(self.dataset, env.world_size, env.rank, cfg.seed)
        self.loader = DataLoader(
            self.dataset,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=cfg.num_workers,
            pin_memory=cfg.pin_memory and self.device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas)
        )
        self.scheduler = build_scheduler(self.optimizer, self.schedule.warmup_steps, self.schedule.total_steps)
        self.metric_name, self.validate_fn = make_validator(params, self.model, self.device, self.bf16)
        self.state = _State()
        self.pairs_per_step = cfg.batch_size * cfg.grad_accum * env.world_size
        self.window = [0.0, 0]  # seconds and steps since the last step-log row

    # ----- checkpoint
    def _save_checkpoint(self) -> None:
        """Write ``last.pt`` (weights, optimizer, scheduler, every rank's RNG, state and logs), finite only."""
        rngs = [None] * self.env.world_size
        if self.env.is_distributed:
            torch.distributed.all_gather_object(rngs, capture_rng())
        else:
            rngs = [capture_rng()]
        if not self.env.is_main:
            return
        checkpoint = {
            "format": 2,
            "method": self.method,
            "run": self.plan.fingerprint,
            "world_size": self.env.world_size,
            "batch_size": self.cfg.batch_size,
            "trainable": trainable_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None,  # bf16 autocast needs no loss scaling; fp16 is not offered
            "rng": rngs,
            "state": self.state.as_dict(),
        }
        if not all_finite([checkpoint["trainable"], checkpoint["optimizer"]["state"]]):
            raise self._diverged(f"non-finite weights or optimizer state at step {self.state.step}")
        atomic_write(self.ckpt_path, lambda tmp: torch.save(checkpoint, tmp))
        self.saved_step = self.state.step

    def _load_checkpoint(self) -> None:
        ckpt = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
        if ckpt.get("run") != self.plan.fingerprint:
            raise ValueError(
                f"{self.ckpt_path}: written by run {str(ckpt.get('run'))[:16]}, not "
                f"{self.plan.run_id}; delete {self.plan.run_dir} and rerun"
            )
        load_trainable_state(self.model, ckpt["trainable"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        for k, v in ckpt["state"].items():
            setattr(self.state, k, v)
        restore_rng(ckpt["rng"][self.env.rank])
        self.saved_step = self.state.step

    def _diverged(self, what: str) -> NonFiniteLossError:
        """The error for a diverging run, naming the step and the last (finite) checkpoint; marks ``run.json``."""
        where = (
            f"last good checkpoint: {self.ckpt_path} (step {self.saved_step})"
            if self.saved_step is not None
            else "no checkpoint was written"
        )
        message = (
            f"train {self.method}: {what} (epoch {self.state.epoch}); {where}. Lower train.lr or set train.grad_clip"
        )
        if self.env.is_main:
            write_run_record(self.plan, self.identity, f"diverged: {what}")
        return NonFiniteLossError(message)

    # ----- validation
    def _validate(self) -> None:
        """Rank 0 scores the model; a new best is saved as the run's ``adapter/``."""
        s = self.state
        if self.env.is_main:
            was_training = self.model.training
            self.model.eval()
            value = float(self.validate_fn(self.model))
            self.model.train(was_training)
            self.val_log.write(step=s.step, epoch=s.epoch, val_metric=value)
            if s.step == 0:
                s.initial_metric = value
            elif s.best_metric is None or value > s.best_metric:
                s.best_metric, s.best_epoch, s.best_step = value, s.epoch, s.step
                save_adapter_atomic(
                    self.model,
                    self.best_dir,
                    {
                        "method": self.method,
                        "trained": True,
                        "run": self.plan.run_id,
                        "step": s.best_step,
                        "epoch": s.best_epoch,
                        "val_metric": self.metric_name,
                        "val_value": s.best_metric,
                    },
                )
            best = f" (best {s.best_metric:.4f} at step {s.best_step})" if s.best_metric is not None else ""
            log.info(
                "train %s: validation at step %d (epoch %d): %s = %.4f%s",
                self.method,
                s.step,
                s.epoch,
                self.metric_name,
                value,
                best,
            )
        s.last_validated_step = s.step
        D.barrier()

    # ----- the loop
    def run(self, stop_after: int | None) -> Path:
        self._begin()
        while self.state.step < self.schedule.total_steps and self.state.epoch < self.cfg.epochs:
            if self._train_epoch(stop_after):
                self._save_checkpoint()
                self.progress.close()
                return self.paths.adapter
            self._end_epoch()
        self.progress.close()
        return self._finish()

    def _begin(self) -> None:
        """Load the run's checkpoint (resume) or validate the untrained model (fresh); (re)write the logs whole."""
        resumed = self.plan.mode == "resume"
        if resumed:
            self._load_checkpoint()
        else:
            torch.manual_seed(self.cfg.seed + self.env.rank)  # per-rank dropout streams (a resume restores them)
        main = self.env.is_main
        self.step_log = CsvLog(self.paths.log_path, LOG_FIELDS, self.state.log_rows, main)
        self.val_log = CsvLog(self.paths.val_log_path, VAL_FIELDS, self.state.val_rows, main)
        self.progress = Progress(f"train {self.method}", self.schedule.total_steps, self.state.step, main)
        self.engine.train()
        if not resumed:
            self._validate()  # the untrained model's score, for reference (not a selection candidate)
            self._save_checkpoint()

    def _train_epoch(self, stop_after: int | None) -> bool:
        """Run the rest of the current epoch; True when ``stop_after`` stopped it."""
        cfg, s, sch = self.cfg, self.state, self.schedule
        self.sampler.set_epoch(s.epoch)
        self.sampler.set_start(s.batch_in_epoch * cfg.batch_size)
        micro, t0 = 0, time.perf_counter()
        for batch in self.loader:
            if s.batch_in_epoch >= sch.batches_per_epoch or s.step >= sch.total_steps:
                break
            last_micro = micro == cfg.grad_accum - 1
            loss = self._forward_backward(batch, sync=last_micro)
            s.batch_in_epoch += 1
            micro += 1
            if not last_micro:
                continue
            micro = 0
            self._optimizer_step(loss, time.perf_counter() - t0)
            if s.step % cfg.checkpoint_every == 0 and s.batch_in_epoch < sch.batches_per_epoch:
                self._save_checkpoint()
            if stop_after is not None and stop_after <= s.step < sch.total_steps:
                return True
            t0 = time.perf_counter()
        return False

    def _forward_backward(self, batch: dict, sync: bool) -> float:
        """Forward and backward of one micro-batch; returns the global batch's loss (same on every rank)."""
        no_sync = self.env.is_distributed and not sync
        with self.engine.no_sync() if no_sync else nullcontext():
            with D.autocast(self.device, "bf16" if self.bf16 else "fp32"):
                out = self.engine(
                    *(
                        batch[k].to(self.device, non_blocking=True)
                        for k in ("image", "input_ids", "attention_mask", "labels")
                    )
                )
            loss = out["loss"]
            value = D.all_reduce_mean(float(loss.detach()))  # a rank's loss may cover only its own rows
            if not math.isfinite(value):
                raise self._diverged(
                    f"non-finite loss {value} at step {self.state.step + 1} (micro-batch {self.state.batch_in_epoch})"
                )
            (loss / self.cfg.grad_accum).backward()
        return value

    def _optimizer_step(self, loss: float, seconds: float) -> None:
        """Clip, step the optimizer and the schedule, check the weights, log."""
        cfg, s = self.cfg, self.state
        log_now = s.step + 1 == self.schedule.total_steps or (s.step + 1) % cfg.log_every == 0
        grad_norm = None
        if cfg.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip)
        elif log_now:  # the (synchronised) gradient norm before clipping, for the log
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.trainable if p.grad is not None])
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        s.step += 1
        finite = torch.stack([torch.isfinite(p).all() for p in self.trainable]).all()  # one device sync
        if not bool(finite):  # a huge lr can give a finite loss and NaN weights
            raise self._diverged(f"non-finite weights after step {s.step}")
        s.last_loss, s.pairs_seen, s.train_time_s = loss, s.pairs_seen + self.pairs_per_step, s.train_time_s + seconds
        self.window = [self.window[0] + seconds, self.window[1] + 1]
        self.progress.update(s.step, s.epoch, loss, lr)
        if log_now:
            self.step_log.write(
                step=s.step,
                epoch=s.epoch,
                loss=loss,
                lr=lr,
                logit_scale=float(self.model.logit_scale.detach()),
                grad_norm=float(grad_norm),
                pairs_per_s=self.window[1] * self.pairs_per_step / max(self.window[0], 1e-9),
            )
            self.window = [0.0, 0]

    def _end_epoch(self) -> None:
        """At a complete epoch: validate when due, move to the next epoch, checkpoint."""
        s = self.state
        if s.batch_in_epoch < self.schedule.batches_per_epoch:  # max_steps ended the run mid-epoch
            return
        if (s.epoch + 1) % self.cfg.validate_every == 0:
            self._validate()
        s.epoch, s.batch_in_epoch = s.epoch + 1, 0
        self._save_checkpoint()

    def _finish(self) -> Path:
        """Final validation, the summary into the checkpoint, then the stage outputs from the run folder."""
        s = self.state
        if s.last_validated_step != s.step:
            self._validate()
        s.finished, s.summary = True, self._summary()
        self._save_checkpoint()
        if self.env.is_main:
            write_run_record(self.plan, self.identity, "finished", s.summary)
            _publish(self.plan.run_dir, self.paths, s.as_dict())
            log.info(
                "train %s: finished run %s: %d steps in %.1f s, best %s = %.4f at step %s (untrained %.4f); "
                "adapter -> %s, metrics -> %s, logs -> %s",
                self.method,
                self.plan.run_id,
                s.step,
                s.train_time_s,
                self.metric_name,
                s.best_metric,
                s.best_step,
                s.initial_metric,
                self.paths.adapter,
                self.paths.metrics_path,
                self.paths.log_path,
            )
        D.barrier()
        return self.paths.adapter

    def _summary(self) -> dict:
        s = self.state
        return {
            "trained": True,
            "run": self.plan.run_id,
            "fingerprint": self.plan.fingerprint,
            "steps": s.step,
            "epochs": s.epoch,
            "final_loss": s.last_loss,
            "val_metric": self.metric_name,
            "val_initial": s.initial_metric,
            "val_best": s.best_metric,
            "best_epoch": s.best_epoch,
            "best_step": s.best_step,
            "train_time_s": s.train_time_s,
            "pairs_per_s": s.pairs_seen / s.train_time_s if s.train_time_s else None,
            "world_size": self.env.world_size,
            "global_batch": self.pairs_per_step,
        }
