"""Training: one code path for 1 or N processes (docs/method.md#training).

``train(params, method, out_dir)`` adapts the method's model on the MIMIC-CXR training pairs with the label-guided
InfoNCE loss, selects the best adapter on the validation set (never a test benchmark) and writes::

    out_dir/adapter/                 best adapter (save_adapter format), replaced atomically
    checkpoint_dir/last.pt           resumable state (weights_only-loadable), replaced atomically
    checkpoint_dir/best.pt           trainable weights of the best validation so far
    log_path        (log.csv)        one row every ``log_every`` optimizer steps
    <log_path stem>_val.csv          one row per validation (step 0 = the untrained model)
    metrics_path    (metrics.json)   summary

``checkpoint_dir``, ``log_path`` and ``metrics_path`` default to ``out_dir/checkpoints``, ``out_dir/log.csv`` and
``out_dir/metrics.json``; the pipeline keeps checkpoints outside ``out_dir`` because DVC and Snakemake delete a
stage's outputs before re-running it, and the best adapter is restored from ``best.pt`` on resume.

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

import csv
import dataclasses
import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ace_lora import distributed as D
from ace_lora.config import LossConfig, ModelConfig, Params, TrainConfig, resolve_method
from ace_lora.io import atomic_dir, atomic_write, atomic_write_text

LOG_FIELDS = ("step", "epoch", "loss", "lr", "logit_scale", "grad_norm", "pairs_per_s")
VAL_FIELDS = ("step", "epoch", "val_metric")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


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


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
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
        raise ValueError(f"train: {n_pairs} training pairs give no full step with batch_size {cfg.batch_size} x "
                         f"grad_accum {cfg.grad_accum} x {world_size} process(es)")
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
        return iter(list(super().__iter__())[self.start:])

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
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
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
        raise ValueError(f"checkpoint does not match the model's trainable parameters: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
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

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        image_emb, text_emb = self.model(images, input_ids, attention_mask)  # (B, D), (B, D)
        return self.loss_fn(image_emb.float(), text_emb.float(), self.model.logit_scale, labels)


def finding_columns() -> list[str]:
    """The 14 CheXpert-labeller finding columns of the MIMIC manifest (owned by the data package)."""
    from ace_lora.data.readers import CHEXPERT_FINDINGS

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
        metrics, _ = evaluate_benchmark(m, spec, manifest, spec.root(processed), prompts, eval_cfg, device)
        if key not in metrics:
            raise KeyError(f"evaluate_benchmark({name}) returned no {key}: {sorted(metrics)}")
        return float(metrics[key])

    return key, validate


def validation_prompts(params: Params, spec) -> dict[str, list[str]]:
    """``{class: [prompts]}`` of the validation benchmark from ``{results}/prompts.json``, else from params."""
    from ace_lora import prompts as P

    path = Path(params.paths.results) / "prompts.json"
    if path.is_file():
        return P.read_prompts(path, spec.name, spec.classes)
    return P.build_prompts(params.prompts, [spec.name])[spec.name]


# ------------------------------------------------------------------------------------------ logging


class CsvLog:
    """Append-only CSV written by rank 0; on resume rows after the checkpoint's step are dropped."""

    def __init__(self, path: Path, fields: tuple[str, ...], enabled: bool, keep_until: int | None):
        self.path, self.fields, self.enabled = path, fields, enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if keep_until is not None and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, **row) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)


# ----------------------------------------------------------------------------------------- training


@dataclass
class _State:
    """Where the run stands; everything here goes into the checkpoint."""

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

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TrainPaths:
    out_dir: Path
    checkpoint_dir: Path
    log_path: Path
    metrics_path: Path

    @property
    def adapter(self) -> Path:
        return self.out_dir / "adapter"

    @property
    def last(self) -> Path:
        return self.checkpoint_dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoint_dir / "best.pt"

    @property
    def val_log_path(self) -> Path:
        return self.log_path.with_name(f"{self.log_path.stem}_val.csv")


def train(params: Params, method: str, out_dir: Path, resume: bool = False, *,
          checkpoint_dir: Path | None = None, log_path: Path | None = None, metrics_path: Path | None = None,
          stop_after: int | None = None) -> Path:
    """Train ``method`` (or export its untrained/supplied adapter); return ``out_dir/adapter``.

    ``resume=True`` continues from ``checkpoint_dir/last.pt`` exactly where it stopped (a fresh start when there
    is none). ``stop_after`` stops (after writing a checkpoint) once that many optimizer steps are done in total,
    without changing the schedule: a preemption, for time-limited jobs and tests.
    """
    out_dir = Path(out_dir)
    paths = TrainPaths(out_dir, Path(checkpoint_dir) if checkpoint_dir else out_dir / "checkpoints",
                       Path(log_path) if log_path else out_dir / "log.csv",
                       Path(metrics_path) if metrics_path else out_dir / "metrics.json")
    method_cfg, model_cfg, loss_cfg = resolve_method(params, method)
    owns_group = not D.is_dist()
    env = D.init_distributed(params.train.device)
    try:
        if not method_cfg.train:
            return _export_adapter(method_cfg, model_cfg, loss_cfg, method, paths, env)
        return _Trainer(params, method, model_cfg, loss_cfg, paths, env).run(resume, stop_after)
    finally:
        if owns_group:
            D.destroy_distributed()


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
                M.import_official_checkpoint(Path(source), tmp, preset=model_cfg.preset, model_cfg=model_cfg,
                                             loss_cfg=loss_cfg)
        else:
            raise FileNotFoundError(f"methods.{method}.adapter: {source} does not exist")
        atomic_write_text(paths.metrics_path, json.dumps(
            {"trained": False, "steps": 0, "source": source}, indent=2) + "\n")
        CsvLog(paths.log_path, LOG_FIELDS, True, None)  # empty logs: every method has the same outputs
        CsvLog(paths.val_log_path, VAL_FIELDS, True, None)
    D.barrier()
    return adapter_dir


class _Trainer:
    def __init__(self, params: Params, method: str, model_cfg: ModelConfig, loss_cfg: LossConfig,
                 paths: TrainPaths, env: D.DistEnv):
        self.params, self.cfg, self.method = params, params.train, method
        self.paths, self.env, self.device = paths, env, env.device
        self.bf16 = D.use_bf16(self.cfg.precision, self.device)
        cfg = self.cfg

        read_pairs_manifest(params, "train")  # fail before building the model when data is missing
        seed_everything(cfg.seed)  # identical initialisation on every rank (DDP also broadcasts rank 0's)
        self.model, self.loss_fn = build_components(model_cfg, loss_cfg)
        self.model.to(self.device)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not self.trainable:
            raise ValueError(f"methods.{method}: nothing to train (LoRA off, no ACE-HGNN, fixed logit scale); "
                             "set train: false")
        self.step_module = ContrastiveStep(self.model, self.loss_fn)
        if env.is_distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.engine = DDP(self.step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                              broadcast_buffers=False, find_unused_parameters=False)
        else:
            self.engine = self.step_module

        self.dataset = make_pair_dataset(params, self.model, "train", train=True)
        self.schedule = plan_schedule(cfg, len(self.dataset), env.world_size)
        self.sampler = ResumableSampler(self.dataset, env.world_size, env.rank, cfg.seed)
        self.loader = DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=self.sampler, drop_last=True,
                                 num_workers=cfg.num_workers, pin_memory=cfg.pin_memory and self.device.type == "cuda",
                                 generator=torch.Generator().manual_seed(cfg.seed))
        self.optimizer = torch.optim.AdamW(self.trainable, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           betas=tuple(cfg.betas))
        self.scheduler = build_scheduler(self.optimizer, self.schedule.warmup_steps, self.schedule.total_steps)
        self.metric_name, self.validate_fn = make_validator(params, self.model, self.device, self.bf16)
        self.state = _State()
        self.ckpt_path = paths.last

    # ----- checkpoint
    def _save_checkpoint(self) -> None:
        rngs = [None] * self.env.world_size
        if self.env.is_distributed:
            torch.distributed.all_gather_object(rngs, capture_rng())
        else:
            rngs = [capture_rng()]
        if not self.env.is_main:
            return
        checkpoint = {
            "format": 1,
            "method": self.method,
            "world_size": self.env.world_size,
            "batch_size": self.cfg.batch_size,
            "trainable": trainable_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None,  # bf16 autocast needs no loss scaling; fp16 is not offered
            "rng": rngs,
            "state": self.state.as_dict(),
        }
        atomic_write(self.ckpt_path, lambda tmp: torch.save(checkpoint, tmp))

    def _load_checkpoint(self) -> None:
        ckpt = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
        if ckpt["method"] != self.method:
            raise ValueError(f"{self.ckpt_path}: checkpoint of method {ckpt['method']!r}, not {self.method!r}")
        if (ckpt["world_size"], ckpt["batch_size"]) != (self.env.world_size, self.cfg.batch_size):
            raise ValueError(f"{self.ckpt_path}: written with {ckpt['world_size']} process(es) x batch "
                             f"{ckpt['batch_size']}; resuming needs the same layout (now {self.env.world_size} x "
                             f"{self.cfg.batch_size}) to continue the same shuffled order")
        load_trainable_state(self.model, ckpt["trainable"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        for k, v in ckpt["state"].items():
            setattr(self.state, k, v)
        restore_rng(ckpt["rng"][self.env.rank])

    # ----- validation
    def _validate(self, val_log: CsvLog) -> None:
        """Rank 0 scores the model; a new best adapter replaces ``out_dir/adapter``."""
        s = self.state
        if self.env.is_main:
            was_training = self.model.training
            self.model.eval()
            value = float(self.validate_fn(self.model))
            self.model.train(was_training)
            val_log.write(step=s.step, epoch=s.epoch, val_metric=value)
            if s.step == 0:
                s.initial_metric = value
            elif s.best_metric is None or value > s.best_metric:
                s.best_metric, s.best_epoch, s.best_step = value, s.epoch, s.step
                best = trainable_state(self.model)
                atomic_write(self.paths.best, lambda tmp: torch.save(best, tmp))
                self._write_adapter()
        s.last_validated_step = s.step
        D.barrier()

    def _write_adapter(self) -> None:
        """Save the model as ``out_dir/adapter`` with its selection record (rank 0)."""
        s = self.state
        save_adapter_atomic(self.model, self.paths.adapter, {
            "method": self.method, "trained": True, "step": s.best_step, "epoch": s.best_epoch,
            "val_metric": self.metric_name, "val_value": s.best_metric})

    def _restore_best_adapter(self) -> None:
        """Rewrite ``out_dir/adapter`` from ``best.pt`` (the pipeline may have deleted it before a resume)."""
        current = trainable_state(self.model)
        load_trainable_state(self.model, torch.load(self.paths.best, map_location="cpu", weights_only=True))
        self._write_adapter()
        load_trainable_state(self.model, current)

    # ----- the loop
    def run(self, resume: bool, stop_after: int | None) -> Path:
        cfg, env, s, sch = self.cfg, self.env, self.state, self.schedule
        if resume and self.ckpt_path.is_file():
            self._load_checkpoint()
        elif resume and env.is_main:
            print(f"train: no checkpoint at {self.ckpt_path}; starting from scratch")
        resumed = resume and self.ckpt_path.is_file()
        if env.is_main:
            for d in (self.paths.out_dir, self.paths.checkpoint_dir, self.paths.log_path.parent):
                d.mkdir(parents=True, exist_ok=True)
        keep = s.step if resumed else None
        step_log = CsvLog(self.paths.log_path, LOG_FIELDS, env.is_main, keep)
        val_log = CsvLog(self.paths.val_log_path, VAL_FIELDS, env.is_main, keep)
        if not resumed:
            torch.manual_seed(cfg.seed + env.rank)  # per-rank dropout streams (a resume restores them)
            if env.is_main:
                self.paths.best.unlink(missing_ok=True)  # a previous run's best is no candidate now
        self.engine.train()

        if not resumed:
            self._validate(val_log)  # the untrained model's score, for reference (not a selection candidate)
            self._save_checkpoint()

        pairs_per_step = cfg.batch_size * cfg.grad_accum * env.world_size
        progress = None
        if env.is_main:
            from tqdm.auto import tqdm

            progress = tqdm(total=sch.total_steps, initial=s.step, desc=f"train {self.method}", unit="step",
                            dynamic_ncols=True)
        window_t, window_steps = 0.0, 0
        stopped_early = False
        while s.step < sch.total_steps and s.epoch < cfg.epochs:
            self.sampler.set_epoch(s.epoch)
            self.sampler.set_start(s.batch_in_epoch * cfg.batch_size)
            micro, t0 = 0, time.perf_counter()
            for batch in self.loader:
                if s.batch_in_epoch >= sch.batches_per_epoch or s.step >= sch.total_steps:
                    break
                last_micro = micro == cfg.grad_accum - 1
                sync = nullcontext() if last_micro or not env.is_distributed else self.engine.no_sync()
                with sync:
                    with D.autocast(self.device, "bf16" if self.bf16 else "fp32"):
                        out = self.engine(batch["image"].to(self.device, non_blocking=True),
                                          batch["input_ids"].to(self.device, non_blocking=True),
                                          batch["attention_mask"].to(self.device, non_blocking=True),
                                          batch["labels"].to(self.device, non_blocking=True))
                    loss = out["loss"]
                    # the global batch's loss (a rank's loss may cover only its own rows); same on every rank
                    value = D.all_reduce_mean(float(loss.detach()))
                    if not math.isfinite(value):
                        if progress is not None:
                            progress.close()
                        raise NonFiniteLossError(
                            f"non-finite loss {value} at step {s.step + 1} (epoch {s.epoch}, micro-batch "
                            f"{s.batch_in_epoch}); last good checkpoint: {self.ckpt_path}")
                    (loss / cfg.grad_accum).backward()
                s.batch_in_epoch += 1
                micro += 1
                if not last_micro:
                    continue
                log_now = s.step + 1 == sch.total_steps or (s.step + 1) % cfg.log_every == 0
                grad_norm = None
                if cfg.grad_clip is not None:
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip)
                elif log_now:  # the (synchronised) gradient norm before clipping, for the log
                    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.trainable if p.grad is not None])
                lr = self.optimizer.param_groups[0]["lr"]
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                micro = 0
                s.step += 1
                s.last_loss = value
                s.pairs_seen += pairs_per_step
                dt = time.perf_counter() - t0
                s.train_time_s += dt
                window_t += dt
                window_steps += 1
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", epoch=s.epoch)
                if log_now:
                    step_log.write(step=s.step, epoch=s.epoch, loss=value, lr=lr,
                                   logit_scale=float(self.model.logit_scale.detach()),
                                   grad_norm=float(grad_norm),
                                   pairs_per_s=window_steps * pairs_per_step / max(window_t, 1e-9))
                    window_t, window_steps = 0.0, 0
                if s.step % cfg.checkpoint_every == 0 and s.batch_in_epoch < sch.batches_per_epoch:
                    self._save_checkpoint()
                if stop_after is not None and s.step >= stop_after and s.step < sch.total_steps:
                    stopped_early = True
                    break
                t0 = time.perf_counter()
            if stopped_early:
                break
            if s.batch_in_epoch >= sch.batches_per_epoch:  # epoch complete
                if (s.epoch + 1) % cfg.validate_every == 0:
                    self._validate(val_log)
                s.epoch, s.batch_in_epoch = s.epoch + 1, 0
                self._save_checkpoint()
        if progress is not None:
            progress.close()
        if stopped_early:
            self._save_checkpoint()
            return self.paths.adapter
        if s.last_validated_step != s.step:
            self._validate(val_log)
            self._save_checkpoint()
        if env.is_main:
            if not self.paths.adapter.is_dir():
                self._restore_best_adapter()
            atomic_write_text(self.paths.metrics_path, json.dumps({
                "trained": True,
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
                "world_size": env.world_size,
                "global_batch": pairs_per_step,
            }, indent=2) + "\n")
        D.barrier()
        return self.paths.adapter
