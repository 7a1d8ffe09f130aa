"""Typed configuration built from ``params.yaml``.

Every section of ``params.yaml`` maps onto one frozen dataclass below. Each field is declared with
:func:`param`, which records its help text and constraints; the JSON schema in
``workflow/schemas/params.schema.json`` is generated from these declarations (``python -m ace_lora schema``)
so the schema, the dataclasses and the parameter documentation cannot drift apart.

Unknown keys, wrong types, out-of-range or non-finite values, and names that are not words raise
:class:`ParamsError` naming the dotted key. Names that become paths or shell words (methods, data sets, benchmark
and domain keys) must match :data:`NAME_PATTERN`, and ``paths`` entries :data:`PATH_PATTERN`: a method named
``../x`` or with a backtick is refused before any stage or DAG engine uses it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ace_lora import registry

#: A name that becomes a path component or a shell word: letters, digits, '_' and '-', not starting with '-'.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_-]*$"
#: A ``paths`` entry: a plain relative or absolute path (no spaces, quotes or shell characters).
PATH_PATTERN = r"^[A-Za-z0-9_./+][A-Za-z0-9_./+-]*$"


class ParamsError(ValueError):
    """An invalid parameter; the message names the dotted key."""


def param(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    items: tuple | None = None,
    length: int | None = None,
    names: bool = False,
    pattern: str | None = None,
) -> Any:
    """Declare a configuration field with its documentation and constraints.

    ``choices`` constrains a scalar; ``items`` the elements of a list field, ``length`` its length. ``minimum`` and
    ``maximum`` are inclusive bounds, ``above`` and ``below`` exclusive ones (for a list: of each element).
    ``names``: the keys of a mapping field must match :data:`NAME_PATTERN`; ``pattern``: a string field must match.
    """
    meta = {
        "help": help,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "above": above,
        "below": below,
        "items": items,
        "length": length,
        "names": names,
        "pattern": pattern,
    }
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        factory = (lambda d=default: type(d)(d)) if not dataclasses.is_dataclass(default) else type(default)
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = param(True, "Add LoRA adapters (False: towers stay exactly the base model).")
    rank: int = param(4, "LoRA rank r.", minimum=1)
    alpha: float = param(
        1.0, "LoRA alpha; scaling s = alpha / sqrt(rank) (rsLoRA-style, docs/method.md#lora).", above=0
    )
    dropout: float = param(0.1, "Dropout on the LoRA input only.", minimum=0, below=1)
    targets: list[str] = param(
        ["q", "k", "v"], "Attention projections that get an adapter.", items=("q", "k", "v", "o")
    )
    towers: list[str] = param(["image", "text"], "Towers that get adapters.", items=("image", "text"))
    layers: list[int] | None = param(None, "Layer indices that get adapters; null = all layers.", minimum=0)
    init: str = param(
        "independent",
        "independent: own random A per layer. shared: the reference quirk "
        "(RNG reseeded per layer, identical A in every layer).",
        choices=("independent", "shared"),
    )

    def __post_init__(self) -> None:
        for name in ("targets", "towers"):
            values = list(getattr(self, name))
            if self.enabled and not values:
                raise ParamsError(f"lora.{name}: empty while lora.enabled is true (set enabled: false instead)")
            if len(set(values)) != len(values):
                raise ParamsError(f"lora.{name}: duplicate entries {values}")


@dataclass(frozen=True)
class HgnnConfig:
    towers: str = param("both", "Towers refined by ACE-HGNN.", choices=("both", "image", "text", "none"))
    topk: int = param(5, "Hyperedge size k: kept neighbours per node.", minimum=1)
    hidden: int = param(128, "Bottleneck width of the edge and node MLPs.", minimum=1)
    text_nodes: str = param(
        "all",
        "all: every text position is a node, [SEP]/[PAD] included (reference). "
        "content: [PAD]/[SEP] nodes masked out (fix).",
        choices=("all", "content"),
    )
    fusion: str = param(
        "replace",
        "replace: v'0 = norm(Y0) replaces the CLS embedding (reference). "
        "residual: v'0 = norm(x0 + gamma*Y0), gamma zero-initialised (fix).",
        choices=("replace", "residual"),
    )
    prior: str = param(
        "reference",
        "Attention prior: reference (image pre-softmax logits, text softmax), or one kind for both towers.",
        choices=("reference", "softmax", "logits"),
    )


@dataclass(frozen=True)
class ModelConfig:
    preset: str = param(
        "tiny", "Architecture preset: tiny (demo, tests) or biomedclip (paper).", choices=("tiny", "biomedclip")
    )
    checkpoint: str | None = param(
        None,
        "BiomedCLIP open_clip checkpoint: a local file or folder, or "
        "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224. "
        "null = random towers (the demo).",
    )
    tokenizer: str | None = param(
        None,
        "Tokenizer folder (vocab.txt). null = the checkpoint's folder "
        "(biomedclip) or the shipped demo vocabulary (tiny).",
    )
    init_seed: int = param(0, "Seed of the random towers when no checkpoint is given.", minimum=0)
    lora: LoraConfig = param(LoraConfig(), "LoRA settings.")
    hgnn: HgnnConfig = param(HgnnConfig(), "ACE-HGNN settings.")
    dropout_sites: str = param(
        "reference",
        "Train-mode dropout sites besides the LoRA input dropout (docs/method.md"
        "#dropout-sites). reference: as the reference's training: BERT embedding and MLP-output "
        "dropout only (its LoRA attention has no attention-probability or attention-output "
        "dropout; the ViT has none). bert: HF BERT's own four sites (adds attention-probability "
        "and attention-output dropout).",
        choices=("reference", "bert"),
    )


@dataclass(frozen=True)
class LossConfig:
    label_guided: bool = param(
        True,
        "Remove same-label pairs from InfoNCE denominators "
        "(docs/method.md#label-guided-infonce); "
        "False: plain symmetric InfoNCE.",
    )
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
    raw: str = param(
        "data/raw", "Raw data sets, one folder per data set in its distributed layout.", pattern=PATH_PATTERN
    )
    processed: str = param(
        "data/processed", "Prepared data: one folder per data set (manifest + image cache).", pattern=PATH_PATTERN
    )
    results: str = param("results", "Training, evaluation and report outputs.", pattern=PATH_PATTERN)


@dataclass(frozen=True)
class DemoConfig:
    seed: int = param(0, "Seed of the synthetic demo data.", minimum=0)
    n_train: int = param(2000, "Synthetic MIMIC-style training pairs.", minimum=8)
    n_per_class: int = param(60, "Synthetic test images per class of each evaluation data set.", minimum=2)
    image_size: int = param(64, "Side of the synthetic raw images (DICOMs are written at 2x).", minimum=16)


@dataclass(frozen=True)
class DataConfig:
    source: str = param(
        "demo",
        "demo: synthetic data in each raw layout; real: verify (or download) real data.",
        choices=("demo", "real"),
    )
    image_size: int = param(64, "Shortest side of the prepared image cache (224 for the paper).", minimum=16)
    on_bad_input: str = param(
        "error",
        "error: stop at the first bad file, naming it. skip: skip and count it in prepare_report.json.",
        choices=("error", "skip"),
    )
    split_seed: int = param(
        0, "Seed of the RSNA and SIIM patient splits (each patient's split hashes its id with it).", minimum=0
    )
    chexpert_seed: int = param(
        0, "Seed of the CheXpert 5x200 sampling (MGCA's random_state 0), independent of split_seed.", minimum=0
    )
    raw_hash: str = param(
        "content",
        "How the fetch record fingerprints the raw files: content (sha256 of every "
        "file) or stat (size + mtime; much faster on full data sets, misses in-place edits that "
        "keep both).",
        choices=("content", "stat"),
    )
    demo: DemoConfig = param(DemoConfig(), "Synthetic demo data settings.")
    urls: dict = param(
        {},
        "source real: download URLs overriding the defaults, per key: lc25000 (a mirror of "
        "LC25000.zip), mimic (MIMIC-CXR-JPG base URL), mimic_reports (mimic-cxr-reports.zip).",
        names=True,
    )
    sha256: dict = param({}, "source real: expected sha256 of downloaded archives, per key of data.urls.", names=True)

    def __post_init__(self) -> None:
        for name in ("urls", "sha256"):
            for key, value in getattr(self, name).items():
                if not isinstance(value, str) or not value.strip():
                    raise ParamsError(f"data.{name}.{key}: expected a non-empty string, got {value!r}")
        for key, value in self.sha256.items():
            if not re.fullmatch(r"[0-9A-Fa-f]{64}", value):
                raise ParamsError(f"data.sha256.{key}: expected 64 hex digits, got {value!r}")


@dataclass(frozen=True)
class PromptsConfig:
    templates: dict = param(
        {},
        "Prompt templates per domain (chest, histopathology): a template or a list; each "
        "has exactly one '{}' field, the class phrase.",
        names=True,
    )
    class_names: dict = param(
        {}, "Per benchmark: class label -> phrase (or list of phrases) used in the prompts.", names=True
    )
    negative: str = param(
        "reference",
        "Phrase of the negative class of RSNA and SIIM: reference: 'No Finding' (the "
        "reference's). no_acute_findings: 'no acute findings'.",
        choices=("reference", "no_acute_findings"),
    )

    def __post_init__(self) -> None:
        for domain, templates in self.templates.items():
            for template in templates if isinstance(templates, list) and templates else [templates]:
                check_template(template, f"prompts.templates.{domain}")
        for bench, names in self.class_names.items():
            if not isinstance(names, dict):
                raise ParamsError(
                    f"prompts.class_names.{bench}: expected a mapping class label -> phrase(s), "
                    f"got {type(names).__name__}"
                )
            for label, phrases in names.items():
                phrases = [phrases] if isinstance(phrases, str) else phrases
                if (
                    not isinstance(phrases, list)
                    or not phrases
                    or not all(isinstance(p, str) and p.strip() for p in phrases)
                ):
                    raise ParamsError(
                        f"prompts.class_names.{bench}.{label}: expected a non-empty phrase or list "
                        f"of phrases, got {names[label]!r}"
                    )


def check_template(template: Any, key: str) -> None:
    """A prompt template must be text with exactly one replacement field, written ``{}``."""
    if not isinstance(template, str) or not template.strip():
        raise ParamsError(f"{key}: expected a non-empty template string, got {template!r}")
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ParamsError(
            f"{key}: template {template!r} is not a format string ({err}); write literal braces as '{{{{' and '}}}}'"
        ) from None
    if fields != [("", "", None)]:
        raise ParamsError(
            f"{key}: template {template!r} must contain exactly one '{{}}' field (the class phrase), "
            f"no other or named fields"
        )


# ----------------------------------------------------------------------------------- train, evaluate


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = param(40, "Training epochs.", minimum=1)
    max_steps: int | None = param(None, "Stop after this many optimizer steps (null: epochs decide).", minimum=1)
    batch_size: int = param(64, "Pairs per process and step.", minimum=2)
    lr: float = param(1e-3, "AdamW peak learning rate.", above=0)
    weight_decay: float = param(0.01, "AdamW weight decay.", minimum=0)
    betas: list[float] = param([0.9, 0.999], "AdamW betas: two numbers in [0, 1).", minimum=0, below=1, length=2)
    warmup_epochs: float = param(1.0, "Linear warm-up length in epochs, then cosine to 0 (per step).", minimum=0)
    grad_clip: float | None = param(None, "Clip the gradient norm to this value (null: off).", above=0)
    grad_accum: int = param(1, "Gradient accumulation steps.", minimum=1)
    precision: str = param(
        "auto",
        "auto: bf16 autocast on CUDA, fp32 on CPU. bf16 also pays on a CPU with AMX "
        "(Intel Sapphire Rapids or later): about 2x the fp32 paper-size training step.",
        choices=("auto", "fp32", "bf16"),
    )
    device: str = param(
        "auto", "auto: cuda:LOCAL_RANK when CUDA is available, else CPU.", choices=("auto", "cpu", "cuda")
    )
    num_workers: int = param(0, "DataLoader worker processes.", minimum=0)
    pin_memory: bool = param(True, "Pin host memory when training on CUDA.")
    checkpoint_every: int = param(500, "Write a resumable checkpoint every N steps (and at each epoch end).", minimum=1)
    validate_every: int = param(1, "Validate every N epochs for model selection.", minimum=1)
    validation: str = param(
        "nih14", "Model-selection data set (never a test benchmark).", choices=registry.VALIDATION_DATASETS
    )
    log_every: int = param(10, "Log metrics every N steps.", minimum=1)
    seed: int = param(1, "Training seed.", minimum=0)
    processes: int | None = param(
        None,
        "Training processes, one per GPU, launched with torchrun by the train stage "
        "itself; null = every visible GPU (1 process on CPU).",
        minimum=1,
    )
    keep_runs: int = param(
        3,
        "Run folders kept per method under {results}/checkpoints/<method>/ (each: last.pt "
        "with weights, optimizer state and logs, the best adapter and run.json); older runs are "
        "deleted when a run starts. A kept finished run is reused by an identical rerun.",
        minimum=1,
    )


@dataclass(frozen=True)
class EvaluateConfig:
    datasets: list[str] = param(
        list(registry.TEST_DATASETS),
        "Data sets evaluated for every method; each yields its benchmarks (chexpert: CheXpert "
        "5x200; rsna: classification + detection; siim: classification + segmentation; "
        "mhist; lc25000: lung and colon).",
        items=registry.TEST_DATASETS,
    )
    batch_size: int = param(64, "Images per batch.", minimum=1)
    ensemble: str = param(
        "mean",
        "Prompt ensembling: mean of normalised prompt embeddings, or token_average "
        "(the reference: position-wise mean of token sequences).",
        choices=("mean", "token_average"),
    )
    bootstrap: int = param(1000, "Bootstrap resamples for the 95 % confidence intervals.", minimum=0)
    seed: int = param(0, "Bootstrap seed.", minimum=0)
    num_workers: int = param(0, "DataLoader worker processes.", minimum=0)
    precision: str = param(
        "auto",
        "auto: bf16 autocast on CUDA, fp32 on CPU. bf16 also pays on a CPU with AMX "
        "(Intel Sapphire Rapids or later): about 2x the fp32 paper-size image throughput.",
        choices=("auto", "fp32", "bf16"),
    )
    grounding_thresholds: int = param(
        50,
        "Zero-shot grounding: candidate thresholds of the similarity map "
        "(quantiles of the validation maps) searched on the validation split.",
        minimum=2,
    )
    overlays: int = param(4, "Zero-shot grounding: PNG overlays written per benchmark (0: none).", minimum=0)
    dataeff_fractions: list[float] = param(
        [0.01, 0.1, 1.0],
        "Data-efficient segmentation/detection: fractions "
        "(0 < f ≤ 1) of the train split (seeded) that train a linear patch head on "
        "the frozen encoder; [] = zero-shot grounding only.",
        above=0,
        maximum=1,
    )
    dataeff_steps: int = param(300, "Data-efficient head: AdamW steps.", minimum=1)
    dataeff_lr: float = param(0.01, "Data-efficient head: learning rate.", above=0)


# -------------------------------------------------------------------------------------------- params


@dataclass(frozen=True)
class Params:
    paths: PathsConfig = param(PathsConfig(), "Where data and results live.")
    data: DataConfig = param(DataConfig(), "Data sets and preprocessing.")
    model: ModelConfig = param(ModelConfig(), "Base model, LoRA and ACE-HGNN.")
    loss: LossConfig = param(LossConfig(), "Training loss.")
    methods: dict = param(
        {},
        "Methods compared in the results table: name -> MethodConfig. Names are words "
        "(letters, digits, '_', '-'; not starting with '-'): they become paths and job names.",
        names=True,
    )
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
        tp = next(a for a in tp.__args__ if a is not type(None))
    return typing.get_origin(tp) or tp


def _element_type(tp: Any) -> Any:
    """``list[float]`` (optional or not) -> float; a bare ``list`` -> None."""
    tp = next(a for a in tp.__args__ if a is not type(None)) if _is_optional(tp) else tp
    args = typing.get_args(tp)
    return args[0] if typing.get_origin(tp) is list and args else None


def _check_scalar(key: str, value: Any, base: Any, meta: dict) -> Any:
    """Type, finiteness, choices and bounds of one scalar (a field, or one element of a list field)."""
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if base is bool and not isinstance(value, bool) or base is not bool and isinstance(value, bool):
        raise ParamsError(f"{key}: expected {base.__name__}, got {value!r}")
    if not isinstance(value, base):
        raise ParamsError(f"{key}: expected {base.__name__}, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ParamsError(f"{key}: {value!r} is not a finite number")
    if meta.get("choices") and value not in meta["choices"]:
        raise ParamsError(f"{key}: {value!r} is not one of {list(meta['choices'])}")
    if meta.get("minimum") is not None and value < meta["minimum"]:
        raise ParamsError(f"{key}: {value!r} is below the minimum {meta['minimum']}")
    if meta.get("maximum") is not None and value > meta["maximum"]:
        raise ParamsError(f"{key}: {value!r} is above the maximum {meta['maximum']}")
    if meta.get("above") is not None and not value > meta["above"]:
        raise ParamsError(f"{key}: {value!r} must be greater than {meta['above']}")
    if meta.get("below") is not None and not value < meta["below"]:
        raise ParamsError(f"{key}: {value!r} must be less than {meta['below']}")
    if meta.get("pattern") and not re.match(meta["pattern"], value):
        raise ParamsError(
            f"{key}: {value!r} has characters other than letters, digits and _ . / + - "
            f"(or starts with '-'); use a plain path"
        )
    return value


def check_name(key: str, name: Any) -> str:
    """A name that becomes a path component or a shell word must match :data:`NAME_PATTERN`."""
    if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
        raise ParamsError(
            f"{key}: {name!r} is not a valid name; use letters, digits, '_' and '-' only "
            f"(not starting with '-'), since it becomes a path and a shell word"
        )
    return name


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
    if base is list and isinstance(value, list):
        if meta.get("length") is not None and len(value) != meta["length"]:
            raise ParamsError(f"{key}: expected {meta['length']} values, got {len(value)} ({value!r})")
        element = _element_type(tp)
        if element is not None:
            value = [
                _check_scalar(f"{key}[{i}]", v, element, {**meta, "choices": meta.get("items")})
                for i, v in enumerate(value)
            ]
        if meta.get("items"):
            bad = [v for v in value if v not in meta["items"]]
            if bad:
                raise ParamsError(f"{key}: {bad} not among {list(meta['items'])}")
        return value
    if base is dict and isinstance(value, dict) and meta.get("names"):
        for name in value:
            check_name(f"{key}.{name}" if isinstance(name, str) else key, name)
    return _check_scalar(key, value, base, {**meta, "pattern": meta.get("pattern")} if base is str else meta)


def build(cls: type, data: dict | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and bad values raise :class:`ParamsError`."""
    data = dict(data or {})
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ParamsError(
            f"unknown key(s) {', '.join(where + u for u in unknown)}; allowed: {', '.join(sorted(names))}"
        )
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


def resolve_method(
    params: Params, name: str, method: MethodConfig | None = None
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


_KINDS = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def _schema_for(tp: Any, meta: dict) -> dict:
    base = _base(tp)
    if dataclasses.is_dataclass(base):
        out = schema(base)
    else:
        out = {"type": _KINDS[base]}
    bounds = {
        "minimum": meta.get("minimum"),
        "maximum": meta.get("maximum"),
        "exclusiveMinimum": meta.get("above"),
        "exclusiveMaximum": meta.get("below"),
    }
    bounds = {k: v for k, v in bounds.items() if v is not None}
    if base is list:
        element = _element_type(tp)
        items = {"type": _KINDS[element]} if element is not None else {}
        if meta.get("items"):
            items["enum"] = list(meta["items"])
        out.update({"items": {**items, **bounds}} if items or bounds else {})
        if meta.get("length") is not None:
            out.update(minItems=meta["length"], maxItems=meta["length"])
        bounds = {}
    if meta.get("help"):
        out["description"] = meta["help"]
    if meta.get("choices"):
        out["enum"] = list(meta["choices"])
    out.update(bounds)
    if meta.get("pattern"):
        out["pattern"] = meta["pattern"]
    if meta.get("names"):
        out["propertyNames"] = {"pattern": NAME_PATTERN}
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
        else:
            allowed = _range_text(meta)
        if meta.get("names"):
            allowed = "names: letters, digits, _ -"
        elif meta.get("pattern"):
            allowed = "path: letters, digits, _ . / + -"
        rows.append(
            f"| `{key}` | `{json_default(default)}` | {allowed or base.__name__} | {meta['help'].replace('|', '/')} |"
        )
    return "\n".join(rows)


def _range_text(meta: dict) -> str:
    """``≥ 0``, ``> 0``, ``0 … 1``, ``[0, 1)`` ... for the README table."""
    low = (
        f"[{meta['minimum']}"
        if meta.get("minimum") is not None
        else f"({meta['above']}"
        if meta.get("above") is not None
        else None
    )
    high = (
        f"{meta['maximum']}]"
        if meta.get("maximum") is not None
        else f"{meta['below']})"
        if meta.get("below") is not None
        else None
    )
    if low and high:
        return f"{low}, {high}" + (f" × {meta['length']}" if meta.get("length") else "")
    if low:
        return ("≥ " if low[0] == "[" else "> ") + low[1:]
    if high:
        return ("≤ " if high[-1] == "]" else "< ") + high[:-1]
    return ""


def json_default(value: Any) -> str:
    import json

    return json.dumps(value)
