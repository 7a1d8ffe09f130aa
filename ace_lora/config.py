"""Typed configuration built from ``params.yaml``.

Every section of ``params.yaml`` maps onto one frozen dataclass below. Each field is declared with
:func:`param`, which records its help text and constraints; the JSON schema in
``workflow/schemas/params.schema.json`` is generated from these declarations (``python -m ace_lora schema``)
so the schema, the dataclasses and the parameter documentation cannot drift apart.

Unknown keys, wrong types and out-of-range values raise :class:`ParamsError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ParamsError(ValueError):
    """An invalid parameter; the message names the dotted key."""


def param(default: Any, help: str, *, choices: tuple | None = None, minimum: float | None = None,
          maximum: float | None = None, items: tuple | None = None) -> Any:
    """Declare a configuration field with its documentation and constraints.

    ``choices`` constrains a scalar; ``items`` constrains the elements of a list field.
    """
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum, "items": items}
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        factory = (lambda d=default: type(d)(d)) if not dataclasses.is_dataclass(default) else type(default)
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = param(True, "Add LoRA adapters (False: towers stay exactly the base model).")
    rank: int = param(4, "LoRA rank r.", minimum=1)
    alpha: float = param(1.0, "LoRA alpha; scaling s = alpha / sqrt(rank) (rsLoRA-style, SPEC §2).", minimum=0)
    dropout: float = param(0.1, "Dropout on the LoRA input only.", minimum=0, maximum=1)
    targets: list = param(["q", "k", "v"], "Attention projections that get an adapter.", items=("q", "k", "v", "o"))
    towers: list = param(["image", "text"], "Towers that get adapters.", items=("image", "text"))
    layers: list | None = param(None, "Layer indices that get adapters; null = all layers.")
    init: str = param("independent", "independent: own random A per layer. shared: the reference quirk "
                      "(RNG reseeded per layer, identical A in every layer).", choices=("independent", "shared"))

    def __post_init__(self) -> None:
        for name in ("targets", "towers"):
            values = list(getattr(self, name))
            if self.enabled and not values:
                raise ParamsError(f"lora.{name}: empty while lora.enabled is true (set enabled: false instead)")
            if len(set(values)) != len(values):
                raise ParamsError(f"lora.{name}: duplicate entries {values}")
        if self.layers is not None and any(not isinstance(i, int) or isinstance(i, bool) or i < 0
                                           for i in self.layers):
            raise ParamsError(f"lora.layers: expected non-negative layer indices, got {self.layers}")


@dataclass(frozen=True)
class HgnnConfig:
    towers: str = param("both", "Towers refined by ACE-HGNN.", choices=("both", "image", "text", "none"))
    topk: int = param(5, "Hyperedge size k: kept neighbours per node.", minimum=1)
    hidden: int = param(128, "Bottleneck width of the edge and node MLPs.", minimum=1)
    text_nodes: str = param("all", "all: every text position is a node, [SEP]/[PAD] included (reference). "
                            "content: [PAD]/[SEP] nodes masked out (fix).", choices=("all", "content"))
    fusion: str = param("replace", "replace: v'0 = norm(Y0) replaces the CLS embedding (reference). "
                        "residual: v'0 = norm(x0 + gamma*Y0), gamma zero-initialised (fix).",
                        choices=("replace", "residual"))
    prior: str = param("reference", "Attention prior: reference (image pre-softmax logits, text softmax), "
                       "or one kind for both towers.", choices=("reference", "softmax", "logits"))


@dataclass(frozen=True)
class ModelConfig:
    preset: str = param("tiny", "Architecture preset: tiny (demo, tests) or biomedclip (paper).",
                        choices=("tiny", "biomedclip"))
    checkpoint: str | None = param(None, "BiomedCLIP open_clip checkpoint: a local file or folder, or "
                                   "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224. "
                                   "null = random towers (the demo).")
    tokenizer: str | None = param(None, "Tokenizer folder (vocab.txt). null = the checkpoint's folder "
                                  "(biomedclip) or the shipped demo vocabulary (tiny).")
    init_seed: int = param(0, "Seed of the random towers when no checkpoint is given.")
    lora: LoraConfig = param(LoraConfig(), "LoRA settings.")
    hgnn: HgnnConfig = param(HgnnConfig(), "ACE-HGNN settings.")


@dataclass(frozen=True)
class LossConfig:
    label_guided: bool = param(True, "Remove same-label pairs from InfoNCE denominators (SPEC §4); "
                               "False: plain symmetric InfoNCE.")
    learnable_scale: bool = param(True, "Learn the logit scale (linear space, initialised from BiomedCLIP's).")


@dataclass(frozen=True)
class MethodConfig:
    """One row of the results table: a named variant of ``model``/``loss``, trained or not."""

    train: bool = param(True, "Train this method (False: evaluate the base model or `adapter` as is).")
    adapter: str | None = param(None, "Evaluate this adapter folder (or official ACE_LoRA.pt) instead of training.")
    lora: dict = param({}, "Overrides of model.lora for this method.")
    hgnn: dict = param({}, "Overrides of model.hgnn for this method.")
    loss: dict = param({}, "Overrides of loss for this method.")


# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class PathsConfig:
    raw: str = param("data/raw", "Raw data sets, one folder per data set in its distributed layout.")
    processed: str = param("data/processed", "Prepared data: one folder per data set (manifest + image cache).")
    results: str = param("results", "Training, evaluation and report outputs.")


@dataclass(frozen=True)
class DemoConfig:
    seed: int = param(0, "Seed of the synthetic demo data.")
    n_train: int = param(2000, "Synthetic MIMIC-style training pairs.", minimum=8)
    n_per_class: int = param(60, "Synthetic test images per class of each evaluation data set.", minimum=2)
    image_size: int = param(64, "Side of the synthetic raw images (DICOMs are written at 2x).", minimum=16)


@dataclass(frozen=True)
class DataConfig:
    source: str = param("demo", "demo: synthetic data in each raw layout; real: verify (or download) real data.",
                        choices=("demo", "real"))
    image_size: int = param(64, "Shortest side of the prepared image cache (224 for the paper).", minimum=16)
    on_bad_input: str = param("error", "error: stop at the first bad file, naming it. skip: skip and count it "
                              "in prepare_report.json.", choices=("error", "skip"))
    split_seed: int = param(0, "Seed of every protocol split (RSNA, SIIM, CheXpert 5x200 sampling).")
    demo: DemoConfig = param(DemoConfig(), "Synthetic demo data settings.")
    urls: dict = param({}, "source real: download URLs overriding the defaults, per key: lc25000 (a mirror of "
                       "LC25000.zip), mimic (MIMIC-CXR-JPG base URL), mimic_reports (mimic-cxr-reports.zip).")
    sha256: dict = param({}, "source real: expected sha256 of downloaded archives, per key of data.urls.")


@dataclass(frozen=True)
class PromptsConfig:
    templates: dict = param({}, "Prompt templates per domain (chest, histopathology); '{}' is the class phrase.")
    class_names: dict = param({}, "Per benchmark: class label -> phrase used in the prompts.")


# ----------------------------------------------------------------------------------- train, evaluate


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = param(40, "Training epochs.", minimum=1)
    max_steps: int | None = param(None, "Stop after this many optimizer steps (null: epochs decide).")
    batch_size: int = param(64, "Pairs per process and step.", minimum=2)
    lr: float = param(1e-3, "AdamW peak learning rate.", minimum=0)
    weight_decay: float = param(0.01, "AdamW weight decay.", minimum=0)
    betas: list = param([0.9, 0.999], "AdamW betas.")
    warmup_epochs: float = param(1.0, "Linear warm-up length in epochs, then cosine to 0 (per step).", minimum=0)
    grad_clip: float | None = param(None, "Clip the gradient norm to this value (null: off).")
    grad_accum: int = param(1, "Gradient accumulation steps.", minimum=1)
    precision: str = param("auto", "auto: bf16 autocast on CUDA, fp32 on CPU. bf16 also pays on a CPU with AMX "
                           "(Intel Sapphire Rapids or later): about 2x the fp32 paper-size training step.",
                           choices=("auto", "fp32", "bf16"))
    device: str = param("auto", "auto: cuda:LOCAL_RANK when CUDA is available, else CPU.",
                        choices=("auto", "cpu", "cuda"))
    num_workers: int = param(0, "DataLoader worker processes.", minimum=0)
    pin_memory: bool = param(True, "Pin host memory when training on CUDA.")
    checkpoint_every: int = param(500, "Write a resumable checkpoint every N steps (and at each epoch end).",
                                  minimum=1)
    validate_every: int = param(1, "Validate every N epochs for model selection.", minimum=1)
    validation: str = param("nih14", "Model-selection data set (never a test benchmark).",
                            choices=("nih14", "mimic"))
    log_every: int = param(10, "Log metrics every N steps.", minimum=1)
    seed: int = param(1, "Training seed.")
    processes: int | None = param(None, "Training processes, one per GPU, launched with torchrun by the train stage "
                                  "itself; null = every visible GPU (1 process on CPU).", minimum=1)
    keep_runs: int = param(3, "Run folders kept per method under {results}/checkpoints/<method>/ (each: last.pt "
                           "with weights, optimizer state and logs, the best adapter and run.json); older runs are "
                           "deleted when a run starts. A kept finished run is reused by an identical rerun.",
                           minimum=1)


@dataclass(frozen=True)
class EvaluateConfig:
    datasets: list = param(["chexpert", "rsna", "siim", "mhist", "lc25000"],
                           "Data sets evaluated for every method; each yields its benchmarks (chexpert: CheXpert "
                           "5x200; rsna: classification + detection; siim: classification + segmentation; "
                           "mhist; lc25000: lung and colon).", items=("chexpert", "rsna", "siim", "mhist", "lc25000"))
    batch_size: int = param(64, "Images per batch.", minimum=1)
    ensemble: str = param("mean", "Prompt ensembling: mean of normalised prompt embeddings, or token_average "
                          "(the reference: position-wise mean of token sequences).", choices=("mean", "token_average"))
    bootstrap: int = param(1000, "Bootstrap resamples for the 95 % confidence intervals.", minimum=0)
    seed: int = param(0, "Bootstrap seed.")
    num_workers: int = param(0, "DataLoader worker processes.", minimum=0)
    precision: str = param("auto", "auto: bf16 autocast on CUDA, fp32 on CPU. bf16 also pays on a CPU with AMX "
                           "(Intel Sapphire Rapids or later): about 2x the fp32 paper-size image throughput.",
                           choices=("auto", "fp32", "bf16"))
    grounding_thresholds: int = param(50, "Zero-shot grounding: candidate thresholds of the similarity map "
                                      "(quantiles of the validation maps) searched on the validation split.",
                                      minimum=2)
    overlays: int = param(4, "Zero-shot grounding: PNG overlays written per benchmark (0: none).", minimum=0)
    dataeff_fractions: list = param([0.01, 0.1, 1.0], "Data-efficient segmentation/detection: fractions of the "
                                    "train split (seeded) that train a linear patch head on the frozen encoder; "
                                    "[] = zero-shot grounding only.")
    dataeff_steps: int = param(300, "Data-efficient head: AdamW steps.", minimum=1)
    dataeff_lr: float = param(0.01, "Data-efficient head: learning rate.", minimum=0)


# -------------------------------------------------------------------------------------------- params


@dataclass(frozen=True)
class Params:
    paths: PathsConfig = param(PathsConfig(), "Where data and results live.")
    data: DataConfig = param(DataConfig(), "Data sets and preprocessing.")
    model: ModelConfig = param(ModelConfig(), "Base model, LoRA and ACE-HGNN.")
    loss: LossConfig = param(LossConfig(), "Training loss.")
    methods: dict = param({}, "Methods compared in the results table: name -> MethodConfig.")
    train: TrainConfig = param(TrainConfig(), "Training recipe.")
    prompts: PromptsConfig = param(PromptsConfig(), "Zero-shot prompts.")
    evaluate: EvaluateConfig = param(EvaluateConfig(), "Zero-shot evaluation.")


# ------------------------------------------------------------------------------------------ building


def _type_of(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _is_optional(tp: Any) -> bool:
    return isinstance(tp, types.UnionType) and type(None) in tp.__args__


def _base(tp: Any) -> Any:
    if _is_optional(tp):
        return next(a for a in tp.__args__ if a is not type(None))
    return typing.get_origin(tp) or tp


def _check_value(key: str, value: Any, tp: Any, meta: dict) -> Any:
    if value is None:
        if _is_optional(tp):
            return None
        raise ParamsError(f"{key}: must not be null")
    base = _base(tp)
    if dataclasses.is_dataclass(base):
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {type(value).__name__}")
        return build(base, value, key)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if base is bool and not isinstance(value, bool) or base is not bool and isinstance(value, bool):
        raise ParamsError(f"{key}: expected {base.__name__}, got {value!r}")
    if not isinstance(value, base):
        raise ParamsError(f"{key}: expected {base.__name__}, got {type(value).__name__} {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ParamsError(f"{key}: {value!r} is not one of {list(meta['choices'])}")
    if meta.get("minimum") is not None and value < meta["minimum"]:
        raise ParamsError(f"{key}: {value!r} is below the minimum {meta['minimum']}")
    if meta.get("maximum") is not None and value > meta["maximum"]:
        raise ParamsError(f"{key}: {value!r} is above the maximum {meta['maximum']}")
    if meta.get("items") and isinstance(value, list):
        bad = [v for v in value if v not in meta["items"]]
        if bad:
            raise ParamsError(f"{key}: {bad} not among {list(meta['items'])}")
    return value


def build(cls: type, data: dict | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and bad values raise :class:`ParamsError`."""
    data = dict(data or {})
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ParamsError(f"unknown key(s) {', '.join(where + u for u in unknown)}; "
                          f"allowed: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _check_value(key, value, _type_of(cls, name), dict(names[name].metadata))
    obj = cls(**kwargs)
    if cls is Params:
        for name, method in obj.methods.items():
            method = build(MethodConfig, method, f"methods.{name}") if isinstance(method, dict) else method
            resolve_method(obj, name, method)  # validates the overrides
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config (for JSON files and adapter metadata)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameters file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    try:
        return build(Params, data)
    except ParamsError as err:
        raise ParamsError(f"{path}: {err}") from None


def method_names(params: Params) -> list[str]:
    return list(params.methods)


def resolve_method(params: Params, name: str, method: MethodConfig | None = None
                   ) -> tuple[MethodConfig, ModelConfig, LossConfig]:
    """The method's own settings plus ``model``/``loss`` with its overrides applied."""
    if method is None:
        if name not in params.methods:
            raise ParamsError(f"methods.{name}: no such method; defined: {', '.join(params.methods) or 'none'}")
        method = build(MethodConfig, params.methods[name], f"methods.{name}")
    lora = build(LoraConfig, {**to_dict(params.model.lora), **method.lora}, f"methods.{name}.lora")
    hgnn = build(HgnnConfig, {**to_dict(params.model.hgnn), **method.hgnn}, f"methods.{name}.hgnn")
    loss = build(LossConfig, {**to_dict(params.loss), **method.loss}, f"methods.{name}.loss")
    model = dataclasses.replace(params.model, lora=lora, hgnn=hgnn)
    return method, model, loss


# --------------------------------------------------------------------------------------------- schema


def _schema_for(tp: Any, meta: dict) -> dict:
    base = _base(tp)
    if dataclasses.is_dataclass(base):
        out = schema(base)
    else:
        kinds = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
        out = {"type": kinds[base]}
        if meta.get("items"):
            out["items"] = {"enum": list(meta["items"])}
    if meta.get("help"):
        out["description"] = meta["help"]
    if meta.get("choices"):
        out["enum"] = list(meta["choices"])
    if meta.get("minimum") is not None:
        out["minimum"] = meta["minimum"]
    if meta.get("maximum") is not None:
        out["maximum"] = meta["maximum"]
    if _is_optional(tp):
        out["type"] = [out.get("type", "object"), "null"]
        if "enum" in out:
            out["enum"] = out["enum"] + [None]
    return out


def schema(cls: type = Params) -> dict:
    """JSON schema of a config dataclass (the whole ``params.yaml`` by default)."""
    props = {f.name: _schema_for(_type_of(cls, f.name), dict(f.metadata)) for f in dataclasses.fields(cls)}
    out: dict = {"type": "object", "additionalProperties": False, "properties": props}
    if cls is MethodConfig:  # overrides are partial sections: same keys and constraints, none required
        for name, section in (("lora", LoraConfig), ("hgnn", HgnnConfig), ("loss", LossConfig)):
            props[name] = {**schema(section), "description": props[name]["description"]}
    if cls is Params:
        out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        out["title"] = "ace-lora params.yaml"
        props["methods"]["additionalProperties"] = schema(MethodConfig)
    return out


def parameter_table(cls: type = Params, prefix: str = "") -> str:
    """Markdown table of every parameter: key, default, allowed values, meaning (README "Parameters")."""
    rows = [] if prefix else ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        key, meta = prefix + f.name, dict(f.metadata)
        base = _base(_type_of(cls, f.name))
        if dataclasses.is_dataclass(base):
            rows.append(f"| `{key}` | | | {meta['help']} |")
            rows.append(parameter_table(base, key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        allowed = meta.get("choices") or meta.get("items")
        if allowed:
            allowed = ", ".join(map(str, allowed))
        elif meta.get("minimum") is not None or meta.get("maximum") is not None:
            low, high = meta.get("minimum"), meta.get("maximum")
            allowed = f"≥ {low}" if high is None else f"{low} … {high}"
        rows.append(f"| `{key}` | `{json_default(default)}` | {allowed or base.__name__} | "
                    f"{meta['help'].replace('|', '/')} |")
    return "\n".join(rows)


def json_default(value: Any) -> str:
    import json

    return json.dumps(value)
