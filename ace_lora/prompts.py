"""Zero-shot prompts as plain data: templates per domain x class phrases per benchmark.

``build_prompts(cfg, benchmarks)`` -> ``{benchmark: {class label: [prompt, ...]}}``; every prompt is one template
filled with one phrase of the class. ``params.yaml: prompts`` overrides the defaults below (empty = defaults):
``templates: {domain: [template, ...]}`` and ``class_names: {benchmark: {label: phrase | [phrases]}}``.
The file written by ``write_prompts`` is read back per benchmark by ``read_prompts``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ace_lora.config import PromptsConfig
from ace_lora.io import atomic_write_text
from ace_lora.registry import BENCHMARKS, DOMAINS, NEGATIVE_PHRASES

#: Templates per domain; ``{}`` is the class phrase. Chest: the reference's two templates (docs/method.md#zero-shot).
DEFAULT_TEMPLATES: dict[str, list[str]] = {
    "chest": ["a chest X-ray image of {}.", "Findings suggesting {}."],
    "histopathology": ["an H&E stained histopathology image of {}.", "a histopathology slide showing {}."],
}

# The defaults below are read from the registry (ace_lora/registry.py: each benchmark's phrases, domain and
# negative class); ``NEGATIVE_PHRASES`` (``prompts.negative`` -> phrase) is the registry's too.

#: Benchmark -> class label -> default phrase(s). Labels are exactly the manifest labels / finding columns.
DEFAULT_CLASS_NAMES: dict[str, dict[str, list[str]]] = {
    name: {label: list(b.phrases[label]) for label in b.prompt_classes} for name, b in BENCHMARKS.items()
}

#: Benchmark -> class labels in evaluation order (multi-label: "No Finding" is the negative prompt class).
BENCHMARK_CLASSES: dict[str, list[str]] = {name: list(b.prompt_classes) for name, b in BENCHMARKS.items()}

#: Benchmark -> domain (selects the templates).
BENCHMARK_DOMAINS: dict[str, str] = {name: b.domain for name, b in BENCHMARKS.items()}

#: Benchmark -> its negative class, whose phrase ``prompts.negative`` picks (RSNA's and SIIM's "Normal").
NEGATIVE_CLASSES: dict[str, str] = {name: b.negative_class for name, b in BENCHMARKS.items() if b.negative_class}


class PromptsError(KeyError):
    """A missing benchmark, class or template; the message names it."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


def domain_of(benchmark: str) -> str:
    """``chest`` or ``histopathology``."""
    if benchmark not in BENCHMARK_DOMAINS:
        raise PromptsError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARK_DOMAINS)}")
    return BENCHMARK_DOMAINS[benchmark]


def _phrases(value, where: str) -> list[str]:
    phrases = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not phrases or not all(isinstance(p, str) and p.strip() for p in phrases):
        raise PromptsError(f"{where}: expected a non-empty phrase or list of phrases, got {value!r}")
    return phrases


def build_prompts(prompts_cfg: PromptsConfig, benchmarks: list[str]) -> dict[str, dict[str, list[str]]]:
    """``{benchmark: {class label: [template.format(phrase) for template for phrase]}}`` for ``benchmarks``.

    ``prompts_cfg.templates`` replaces a domain's templates; ``prompts_cfg.class_names[benchmark]`` replaces
    the phrases of the labels it names (other labels keep their defaults). ``prompts_cfg.negative`` picks the
    phrase of the benchmarks' negative class (:data:`NEGATIVE_CLASSES`: RSNA's and SIIM's "Normal") from
    :data:`NEGATIVE_PHRASES`; an explicit ``class_names`` entry wins.
    Unknown domains, benchmarks or labels raise :class:`PromptsError`.
    """
    if prompts_cfg.negative not in NEGATIVE_PHRASES:
        raise PromptsError(f"prompts.negative: {prompts_cfg.negative!r} is not one of {list(NEGATIVE_PHRASES)}")
    for domain, templates in prompts_cfg.templates.items():
        if domain not in DOMAINS:
            raise PromptsError(f"prompts.templates.{domain}: unknown domain; use one of {', '.join(DOMAINS)}")
        for t in _phrases(templates, f"prompts.templates.{domain}"):
            if t.count("{}") != 1:
                raise PromptsError(f"prompts.templates.{domain}: template {t!r} must contain '{{}}' exactly once")
    for bench, names in prompts_cfg.class_names.items():
        if bench not in DEFAULT_CLASS_NAMES:
            raise PromptsError(
                f"prompts.class_names.{bench}: unknown benchmark; known: {', '.join(DEFAULT_CLASS_NAMES)}"
            )
        if not isinstance(names, dict):
            raise PromptsError(f"prompts.class_names.{bench}: expected a mapping label -> phrase(s)")
        unknown = [lab for lab in names if lab not in DEFAULT_CLASS_NAMES[bench]]
        if unknown:
            raise PromptsError(
                f"prompts.class_names.{bench}: unknown class label(s) {unknown}; labels are {BENCHMARK_CLASSES[bench]}"
            )
    out: dict[str, dict[str, list[str]]] = {}
    for bench in dict.fromkeys(benchmarks):
        domain = domain_of(bench)
        templates = _phrases(
            prompts_cfg.templates.get(domain, DEFAULT_TEMPLATES[domain]), f"prompts.templates.{domain}"
        )
        override = dict(prompts_cfg.class_names.get(bench, {}))
        if bench in NEGATIVE_CLASSES:
            override.setdefault(NEGATIVE_CLASSES[bench], NEGATIVE_PHRASES[prompts_cfg.negative])
        out[bench] = {}
        for label in BENCHMARK_CLASSES[bench]:
            phrases = _phrases(
                override.get(label, DEFAULT_CLASS_NAMES[bench][label]), f"prompts.class_names.{bench}.{label}"
            )
            out[bench][label] = [t.format(p) for t in templates for p in phrases]
    return out


def write_prompts(prompts: dict[str, dict[str, list[str]]], path: str | Path) -> Path:
    """Write the prompts JSON atomically (temp sibling, then rename); benchmark and class order is kept."""
    return atomic_write_text(path, json.dumps(prompts, indent=2) + "\n")


def read_prompts(path: str | Path, benchmark: str, classes: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    """The prompts of ``benchmark`` from a ``write_prompts`` file: ``{class: [prompts]}``, ``classes`` first in
    their order, then any further classes the file holds (e.g. the "No Finding" negative of multi-label sets).

    Raises :class:`PromptsError` naming the file and the missing benchmark or class(es).
    """
    path = Path(path)
    if not path.is_file():
        raise PromptsError(f"{path}: prompts file not found; run `python -m ace_lora prompts`")
    data = json.loads(path.read_text())
    if benchmark not in data:
        raise PromptsError(
            f"{path}: no prompts for benchmark {benchmark!r}; the file has {', '.join(data) or 'none'}"
            f" (add it to the prompts stage and re-run `python -m ace_lora prompts`)"
        )
    per_class = data[benchmark]
    missing = [c for c in classes if not per_class.get(c)]
    if missing:
        raise PromptsError(
            f"{path}: benchmark {benchmark!r} has no prompts for class(es) "
            f"{', '.join(map(repr, missing))}; it has {', '.join(map(repr, per_class))}"
        )
    out = {c: list(per_class[c]) for c in classes}
    out.update({c: list(v) for c, v in per_class.items() if c not in out})
    return out
