"""Synthetic data sets in each data set's distributed raw layout (docs/method.md#data-sets): test fixtures and the
embedded demo.

``write_fixture(dataset, raw_dir, cfg)`` writes one data set into ``raw_dir`` exactly as the real archive
unpacks (file names, table columns, value spellings, gzip tables, DICOM attributes), at the sizes of
:class:`~ace_lora.config.DemoConfig`. Output is a pure function of ``cfg`` (byte-identical for a seed).

Chest images share one design so the tiny demo model can learn from MIMIC and transfer zero-shot: a stylised
frontal radiograph (body, two dark lung fields, spine, mediastinum, heart) plus 0-2 *findings*, each drawn
as a distinctive local pattern at a finding-specific place (:data:`FINDING_PATTERNS`). The same painters serve
MIMIC, CheXpert, NIH (:data:`NIH_PATTERN` maps NIH names), RSNA (boxes = the pneumonia blobs) and SIIM
(RLE masks = the pneumothorax regions). Reports name the findings with the class phrases verbatim in most
cases. Coordinates are fractions of the image side (x = column, left of the image = the patient's right).
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import re
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ace_lora.config import DemoConfig

DATASETS = ("mimic", "nih14", "chexpert", "rsna", "siim", "mhist", "lc25000")
#: Bumped whenever the generated files change, so `fetch` regenerates an existing demo folder.
FIXTURE_VERSION = 1

# CheXpert train.csv column order of the 14 findings; the MIMIC table lists them alphabetically.
CHEXPERT_FINDINGS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)
MIMIC_LABEL_COLUMNS = tuple(sorted(CHEXPERT_FINDINGS))
CHEXPERT_5X200 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
# NIH finding -> the painter it shares with the CheXpert findings (Emphysema, Fibrosis, Hernia, Mass: own).
NIH_PATTERN = {
    "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Effusion": "Pleural Effusion",
    "Infiltration": "Lung Opacity", "Mass": "Mass", "Nodule": "Lung Lesion", "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax", "Consolidation": "Consolidation", "Edema": "Edema", "Emphysema": "Emphysema",
    "Fibrosis": "Fibrosis", "Pleural_Thickening": "Pleural Other", "Hernia": "Hernia",
}

# The finding -> pattern design (documentation; the painters below implement it).
FINDING_PATTERNS = {
    "Atelectasis": "thin bright horizontal plate-like band, lower image-right lung (0.70, 0.56)",
    "Cardiomegaly": "heart drawn enlarged: ellipse radii (0.20, 0.12) instead of (0.11, 0.085) at (0.55, 0.70)",
    "Consolidation": "sharp-edged dense bright disc, upper-mid image-right lung (0.68, 0.36)",
    "Edema": "horizontal line texture (period 1/16 of the side) over the central zones of both lungs",
    "Pleural Effusion": "bright fluid filling the base of the image-left lung below a meniscus (y > ~0.55-0.60)",
    "Pneumonia": "soft Gaussian opacity, mid image-left lung (0.30, 0.45); 40 %: a second one above (0.33, 0.30)",
    "Pneumothorax": "black air region with a bright pleural line at the image-left apex (0.27, 0.20); "
                    "35 %: a second component at the image-right apex (0.73, 0.20)",
    "Enlarged Cardiomediastinum": "upper mediastinum widened to 0.16 of the side (normal 0.07)",
    "Lung Opacity": "hazy bright square, lower lateral image-right lung (0.78, 0.66)",
    "Lung Lesion": "small bright ring (nodule), lateral image-right lung (0.80, 0.46)",
    "Mass": "large filled bright disc at the Lung Lesion place (NIH Mass)",
    "Pleural Other": "thin bright vertical line along the image-left lateral chest wall (x 0.135)",
    "Fracture": "two short bright diagonal rib segments with a gap, image-right chest wall (0.90, 0.30)",
    "Support Devices": "very bright tube down the midline to (0.48, 0.50) plus a square device at (0.12, 0.08)",
    "Emphysema": "hyperlucent (darker, larger) lung fields",
    "Fibrosis": "reticular dot grid over both lower lung zones",
    "Hernia": "round bright retrocardiac disc (0.50, 0.86)",
}

# Report phrases: (verbatim forms containing the class phrase, synonym forms without it).
REPORT_FORMS = {
    "Atelectasis": (["atelectasis", "left basilar atelectasis", "mild atelectasis"],
                    ["volume loss at the left base", "subsegmental collapse"]),
    "Cardiomegaly": (["cardiomegaly", "mild cardiomegaly", "moderate cardiomegaly"],
                     ["enlarged heart", "enlarged cardiac silhouette"]),
    "Consolidation": (["consolidation", "left upper lobe consolidation", "focal consolidation"],
                      ["dense airspace disease"]),
    "Edema": (["edema", "pulmonary edema", "mild pulmonary edema", "interstitial edema"],
              ["vascular congestion", "kerley b lines"]),
    "Pleural Effusion": (["pleural effusion", "right pleural effusion", "small right pleural effusion"],
                         ["right effusion", "blunting of the right costophrenic angle"]),
    "Pneumonia": (["pneumonia", "right lung pneumonia", "multifocal pneumonia"],
                  ["infection", "airspace opacity concerning for infection"]),
    "Pneumothorax": (["pneumothorax", "right apical pneumothorax", "small pneumothorax"], ["apical pleural air"]),
    "Enlarged Cardiomediastinum": (["enlarged cardiomediastinum", "mildly enlarged cardiomediastinum"],
                                   ["widened mediastinum"]),
    "Lung Opacity": (["lung opacity", "left lower lung opacity"], ["infiltration", "hazy opacity"]),
    "Lung Lesion": (["lung lesion", "left lung lesion"], ["nodule", "pulmonary nodule"]),
    "Pleural Other": (["pleural thickening", "right pleural thickening"], ["pleural scarring"]),
    "Fracture": (["fracture", "left rib fracture"], ["rib deformity"]),
    "Support Devices": (["support devices", "support devices in place"], ["endotracheal tube", "pacemaker"]),
}
SENTENCES = ["{F}.", "There is {f}.", "{F} is present.", "Evidence of {f}."]
UNCERTAIN_SENTENCES = ["Possible {f}.", "{F} cannot be excluded."]
NEGATIONS = {"Pleural Effusion": "pleural effusion", "Pneumothorax": "pneumothorax",
             "Consolidation": "focal consolidation", "Edema": "pulmonary edema"}
NORMAL_FINDINGS = ["The lungs are clear.", "Heart size is normal.", "The cardiomediastinal silhouette is normal."]
NORMAL_IMPRESSIONS = ["No acute findings.", "No acute cardiopulmonary process.", "Normal chest radiograph."]
INDICATIONS = ["___M with cough.", "___F with shortness of breath.", "___M with fever.", "___F with chest pain."]
EXAMINATIONS = {"PA": "CHEST (PA AND LAT)", "AP": "CHEST (PORTABLE AP)"}
REPORT_SKELETON = ("                                 FINAL REPORT\n EXAMINATION:  {exam}\n \n"
                   " INDICATION:  {indication}\n \n TECHNIQUE:  Chest radiograph.\n \n COMPARISON:  None.\n \n")
# Pathological findings (all but these two block "No Finding" in the CheXpert labeller convention).
NON_PATHOLOGY = {"No Finding", "Support Devices"}

# Sampling weights of MIMIC training findings: the CheXpert 5x200 classes and the RSNA/SIIM targets dominate.
_TRAIN_WEIGHTS = {"Atelectasis": 3, "Cardiomegaly": 3, "Consolidation": 3, "Edema": 3, "Pleural Effusion": 3,
                  "Pneumonia": 2, "Pneumothorax": 2, "Enlarged Cardiomediastinum": 1, "Lung Opacity": 1,
                  "Lung Lesion": 1, "Pleural Other": 1, "Fracture": 1, "Support Devices": 1}
# Findings that may accompany a "Normal" RSNA/SIIM image without being the target.
_DISTRACTORS = ("Cardiomegaly", "Support Devices", "Pleural Other", "Fracture", "Enlarged Cardiomediastinum")
# Fraction of RSNA / SIIM images the protocols hold out for testing (docs/method.md#data-sets: RSNA 70/15/15,
# SIIM 30 %): the fixture writes enough images per class that the test split holds about ``n_per_class`` of each.
TEST_FRACTION = {"rsna": 0.15, "siim": 0.30}
# Painting order: structural changes first, overlays after.
_ORDER = ("Emphysema", "Cardiomegaly", "Enlarged Cardiomediastinum")


def _rng(cfg: DemoConfig, dataset: str) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, zlib.crc32(dataset.encode())])


# ------------------------------------------------------------------------------------------ painting


class _Canvas:
    """Float image in [0, 1] (1 = bright = dense) with normalised pixel-centre coordinates and anatomy offset."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size = size
        c = (np.arange(size) + 0.5) / size
        self.yy, self.xx = np.meshgrid(c, c, indexing="ij")
        self.dx, self.dy = rng.uniform(-0.02, 0.02, size=2)
        self.img = np.full((size, size), 0.08)

    def ellipse(self, cx, cy, rx, ry):
        return ((self.xx - cx - self.dx) / rx) ** 2 + ((self.yy - cy - self.dy) / ry) ** 2 <= 1.0

    def lungs(self, scale: float = 1.0):
        return self.ellipse(0.30, 0.45, 0.17 * scale, 0.32 * scale) | self.ellipse(0.70, 0.45, 0.17 * scale,
                                                                                   0.32 * scale)

    def segment(self, x0, y0, x1, y1, half_width):
        """Pixels within ``half_width`` of the segment (x0, y0)-(x1, y1)."""
        px, py = self.xx - self.dx - x0, self.yy - self.dy - y0
        vx, vy = x1 - x0, y1 - y0
        t = np.clip((px * vx + py * vy) / (vx * vx + vy * vy), 0, 1)
        return (px - t * vx) ** 2 + (py - t * vy) ** 2 <= half_width ** 2


def _chest_base(size: int, rng: np.random.Generator) -> _Canvas:
    cv = _Canvas(size, rng)
    u = lambda a: rng.uniform(-a, a)  # noqa: E731
    body = cv.ellipse(0.5, 0.55, 0.45, 0.50)
    cv.img[body] = 0.50 + u(0.04)
    cv.img[cv.lungs()] = 0.20 + u(0.04)
    cv.img[(np.abs(cv.xx - 0.5 - cv.dx) < 0.035) & (cv.yy - cv.dy > 0.10) & (cv.yy - cv.dy < 0.62)] = 0.62
    cv.img[cv.ellipse(0.55, 0.70, 0.11, 0.085)] = 0.62 + u(0.03)
    cv.img[(np.abs(cv.xx - 0.5 - cv.dx) < 0.025) & body] = 0.66  # spine
    return cv


def _finish(cv: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Smooth low-frequency variation + pixel noise, clipped to [0, 1]."""
    low = Image.fromarray(rng.uniform(-0.06, 0.06, size=(6, 6)).astype(np.float32), mode="F")
    low = np.asarray(low.resize((cv.size, cv.size), Image.BILINEAR), dtype=np.float64)
    return np.clip(cv.img + low + rng.normal(0, 0.025, size=cv.img.shape), 0, 1)


def _jit(rng, a=0.02):
    return rng.uniform(-a, a)


def _paint_atelectasis(cv, rng, amp):
    m = cv.ellipse(0.70 + _jit(rng), 0.56 + _jit(rng), 0.12 * rng.uniform(0.85, 1.15), 0.022)
    cv.img[m] += 0.5 * amp
    return [m]


def _paint_cardiomegaly(cv, rng, amp):
    m = cv.ellipse(0.55, 0.70, 0.20 * rng.uniform(0.92, 1.08), 0.12 * rng.uniform(0.92, 1.08))
    cv.img[m] = np.maximum(cv.img[m], 0.45 + 0.2 * amp)
    return [m]


def _paint_consolidation(cv, rng, amp):
    r = 0.065 * rng.uniform(0.85, 1.15)
    m = cv.ellipse(0.68 + _jit(rng), 0.36 + _jit(rng), r, r)
    cv.img[m] += 0.5 * amp
    return [m]


def _paint_edema(cv, rng, amp):
    zone = cv.lungs() & (np.abs(cv.yy - cv.dy - 0.47) < 0.17)
    stripes = ((cv.yy * 16 + rng.uniform(0, 1)) % 1.0) < 0.4
    m = zone & stripes
    cv.img[m] += 0.3 * amp
    return [zone]


def _paint_effusion(cv, rng, amp):
    level = 0.52 + _jit(rng) + 0.08 * (cv.xx - cv.dx - 0.13) / 0.34  # meniscus: higher laterally
    m = cv.ellipse(0.30, 0.45, 0.17, 0.32) & (cv.yy - cv.dy > level)
    cv.img[m] = np.maximum(cv.img[m], 0.45 + 0.3 * amp)
    return [m]


def _gauss(cv, cx, cy, sigma, amp):
    d2 = (cv.xx - cv.dx - cx) ** 2 + (cv.yy - cv.dy - cy) ** 2
    cv.img += amp * np.exp(-d2 / (2 * sigma ** 2))
    return d2 <= (2 * sigma) ** 2


def _paint_pneumonia(cv, rng, amp, n: int | None = None):
    n = n if n is not None else (2 if rng.random() < 0.4 else 1)
    masks = [_gauss(cv, 0.30 + _jit(rng), 0.46 + _jit(rng), 0.055 * rng.uniform(0.9, 1.1), 0.5 * amp)]
    if n > 1:
        masks.append(_gauss(cv, 0.33 + _jit(rng, 0.01), 0.29 + _jit(rng, 0.01), 0.04, 0.45 * amp))
    return masks


def _paint_pneumothorax(cv, rng, amp, n: int | None = None):
    n = n if n is not None else (2 if rng.random() < 0.35 else 1)
    masks = []
    for cx in (0.27, 0.73)[:n]:
        cx, cy, rx, ry = cx + _jit(rng), 0.20 + _jit(rng, 0.01), 0.10 * rng.uniform(0.9, 1.1), 0.06
        inner = cv.ellipse(cx, cy, rx, ry)
        rim = cv.ellipse(cx, cy, rx + 1.5 / cv.size + 0.01, ry + 1.5 / cv.size + 0.01) & ~inner
        cv.img[inner] = 0.02 + 0.15 * (1 - amp)
        cv.img[rim] = np.maximum(cv.img[rim], 0.4 + 0.4 * amp)
        masks.append(inner)
    return masks


def _paint_mediastinum(cv, rng, amp):
    m = (np.abs(cv.xx - 0.5 - cv.dx) < 0.08 * rng.uniform(0.9, 1.1)) & (cv.yy - cv.dy > 0.10) & \
        (cv.yy - cv.dy < 0.58)
    cv.img[m] = np.maximum(cv.img[m], 0.45 + 0.2 * amp)
    return [m]


def _paint_opacity(cv, rng, amp):
    cx, cy, h = 0.78 + _jit(rng), 0.66 + _jit(rng), 0.05
    m = (np.abs(cv.xx - cv.dx - cx) < h) & (np.abs(cv.yy - cv.dy - cy) < h)
    cv.img[m] += 0.3 * amp
    return [m]


def _paint_lesion(cv, rng, amp):
    cx, cy, r = 0.80 + _jit(rng, 0.01), 0.46 + _jit(rng), 0.045
    m = cv.ellipse(cx, cy, r, r) & ~cv.ellipse(cx, cy, r - max(0.018, 1.2 / cv.size), r - max(0.018, 1.2 / cv.size))
    cv.img[m] += 0.55 * amp
    return [cv.ellipse(cx, cy, r, r)]


def _paint_mass(cv, rng, amp):
    r = 0.07 * rng.uniform(0.9, 1.1)
    m = cv.ellipse(0.78 + _jit(rng, 0.01), 0.46 + _jit(rng), r, r)
    cv.img[m] += 0.45 * amp
    return [m]


def _paint_pleural_other(cv, rng, amp):
    x = 0.135 + _jit(rng, 0.008)
    m = cv.segment(x, 0.30 + _jit(rng), x + 0.01, 0.62, max(0.012, 0.8 / cv.size))
    cv.img[m] += 0.5 * amp
    return [m]


def _paint_fracture(cv, rng, amp):
    y = 0.30 + _jit(rng)
    hw = max(0.012, 0.8 / cv.size)
    m = cv.segment(0.86, y - 0.06, 0.895, y - 0.01, hw) | cv.segment(0.91, y + 0.01, 0.945, y + 0.06, hw)
    cv.img[m] += 0.5 * amp
    return [m]


def _paint_devices(cv, rng, amp):
    hw = max(0.012, 0.8 / cv.size)
    tube = cv.segment(0.47, -0.05, 0.48 + _jit(rng, 0.01), 0.50 + _jit(rng), hw)
    box = (np.abs(cv.xx - cv.dx - 0.12) < 0.035) & (np.abs(cv.yy - cv.dy - 0.08) < 0.035)
    cv.img[tube | box] = 0.6 + 0.35 * amp
    return [tube, box]


def _paint_emphysema(cv, rng, amp):
    m = cv.lungs(1.06)
    cv.img[m] = 0.12 - 0.08 * amp
    return [m]


def _paint_fibrosis(cv, rng, amp):
    zone = cv.lungs() & (cv.yy - cv.dy > 0.50)
    dots = (((cv.xx * 10) % 1.0) < 0.35) & (((cv.yy * 10) % 1.0) < 0.35)
    cv.img[zone & dots] += 0.35 * amp
    return [zone]


def _paint_hernia(cv, rng, amp):
    m = cv.ellipse(0.50 + _jit(rng, 0.01), 0.86 + _jit(rng, 0.01), 0.06, 0.05)
    cv.img[m] += 0.35 * amp
    return [m]


_PAINTERS: dict[str, Callable] = {
    "Atelectasis": _paint_atelectasis, "Cardiomegaly": _paint_cardiomegaly, "Consolidation": _paint_consolidation,
    "Edema": _paint_edema, "Pleural Effusion": _paint_effusion, "Pneumonia": _paint_pneumonia,
    "Pneumothorax": _paint_pneumothorax, "Enlarged Cardiomediastinum": _paint_mediastinum,
    "Lung Opacity": _paint_opacity, "Lung Lesion": _paint_lesion, "Mass": _paint_mass,
    "Pleural Other": _paint_pleural_other, "Fracture": _paint_fracture, "Support Devices": _paint_devices,
    "Emphysema": _paint_emphysema, "Fibrosis": _paint_fibrosis, "Hernia": _paint_hernia,
}


def render_chest(size: int, findings: dict[str, float], rng: np.random.Generator,
                 components: dict[str, int] | None = None) -> tuple[np.ndarray, dict[str, list[np.ndarray]]]:
    """A frontal chest image (float [0, 1], shape (size, size)) with ``findings`` {pattern name: strength}.

    Returns the image and, per finding, the boolean masks of its drawn components (RSNA boxes, SIIM masks).
    ``components`` forces the number of blobs of Pneumonia / Pneumothorax.
    """
    cv = _chest_base(size, rng)
    masks: dict[str, list[np.ndarray]] = {}
    for name in sorted(findings, key=lambda n: (n not in _ORDER, _ORDER.index(n) if n in _ORDER else 0, n)):
        kwargs = {"n": components[name]} if components and name in components else {}
        masks[name] = _PAINTERS[name](cv, rng, findings[name] * rng.uniform(0.85, 1.15), **kwargs)
    return _finish(cv, rng), masks


def render_lateral(size: int, rng: np.random.Generator) -> np.ndarray:
    """A lateral view (not used by any protocol; present so that view filters are exercised)."""
    cv = _Canvas(size, rng)
    cv.img[cv.ellipse(0.5, 0.55, 0.30, 0.45)] = 0.5
    cv.img[cv.ellipse(0.5, 0.45, 0.22, 0.32)] = 0.22
    cv.img[cv.ellipse(0.40, 0.66, 0.12, 0.10)] = 0.6
    cv.img[(np.abs(cv.xx - 0.76 - cv.dx) < 0.04) & (cv.yy > 0.1)] = 0.66
    return _finish(cv, rng)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x, y, width, height) in pixels of a boolean mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def encode_rle(mask: np.ndarray) -> str:
    """SIIM run-length encoding of a boolean (H, W) mask: column-major pixels, each start relative to the end
    of the previous run (the first to pixel 0); ``"-1"`` for an empty mask."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    if not len(starts):
        return "-1"
    gaps = starts - np.concatenate([[0], ends[:-1]])
    return " ".join(f"{g} {n}" for g, n in zip(gaps, ends - starts))


# --------------------------------------------------------------------------------------------- reports


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sentence(template: str, form: str) -> str:
    return template.replace("{F}", _cap(form)).replace("{f}", form)


def write_report_text(findings: dict[str, int], rng: np.random.Generator, view: str = "PA",
                      verbatim: float = 0.85) -> tuple[str, dict[str, float]]:
    """A MIMIC-style free-text report for ``findings`` {CheXpert name: 1 (positive) | -1 (uncertain)}.

    Returns (report text, CheXpert-labeller values {finding: 1.0 | 0.0 | -1.0}; absent = blank).
    """
    labels: dict[str, float] = {}
    sentences, impression = [], []
    for name, value in findings.items():
        verbatim_forms, synonyms = REPORT_FORMS[name]
        form = verbatim_forms[rng.integers(len(verbatim_forms))] if rng.random() < verbatim or not synonyms \
            else synonyms[rng.integers(len(synonyms))]
        if value < 0:
            sentences.append(_sentence(UNCERTAIN_SENTENCES[rng.integers(len(UNCERTAIN_SENTENCES))], form))
            labels[name] = -1.0
        else:
            sentences.append(_sentence(SENTENCES[rng.integers(len(SENTENCES))], form))
            labels[name] = 1.0
            phrase = verbatim_forms[0] if rng.random() < verbatim else form
            impression.append(phrase)
    pathological = [n for n in findings if n not in NON_PATHOLOGY]
    negatable = [n for n in NEGATIONS if n not in findings]
    if not pathological:
        labels["No Finding"] = 1.0
        sentences = [NORMAL_FINDINGS[i] for i in sorted(rng.choice(len(NORMAL_FINDINGS), 2, replace=False))] \
            + sentences
        if rng.random() < 0.6:
            sentences.append("No pleural effusion or pneumothorax.")
            labels.update({"Pleural Effusion": 0.0, "Pneumothorax": 0.0})
        impression_text = NORMAL_IMPRESSIONS[rng.integers(len(NORMAL_IMPRESSIONS))]
    else:
        if negatable and rng.random() < 0.4:
            neg = negatable[rng.integers(len(negatable))]
            sentences.append(f"No {NEGATIONS[neg]}.")
            labels[neg] = 0.0
        impression_text = (_cap(" and ".join(impression)) + ".") if impression else \
            "Findings as above."
    findings_text = " ".join(sentences)
    body = REPORT_SKELETON.format(exam=EXAMINATIONS.get(view, EXAMINATIONS["PA"]),
                                  indication=INDICATIONS[rng.integers(len(INDICATIONS))])
    if rng.random() < 0.9:
        body += f" FINDINGS:  \n \n {findings_text}\n \n"
    body += f" IMPRESSION:  \n \n {impression_text}\n"
    return body, labels


def _sample_findings(rng: np.random.Generator, uncertain: float = 0.05) -> dict[str, int]:
    k = rng.choice([0, 1, 2], p=[0.25, 0.45, 0.30])
    names = list(_TRAIN_WEIGHTS)
    p = np.array([_TRAIN_WEIGHTS[n] for n in names], dtype=float)
    chosen = rng.choice(len(names), size=k, replace=False, p=p / p.sum())
    return {names[i]: (-1 if rng.random() < uncertain else 1) for i in sorted(chosen)}


# ----------------------------------------------------------------------------------------- file helpers


def _csv_text(header: list[str] | str, rows: list[list]) -> str:
    head = header if isinstance(header, str) else ",".join(_csv_cell(h) for h in header)
    return head + "\n" + "".join(",".join(_csv_cell(v) for v in row) + "\n" for row in rows)


def _csv_cell(value) -> str:
    text = "" if value is None else str(value)
    return f'"{text}"' if ("," in text or '"' in text) else text


def _write_text(path: Path, text: str, gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as f:
            f.write(text.encode())
        path.write_bytes(buf.getvalue())
    else:
        path.write_text(text)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def _save_image(path: Path, img: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(_to_uint8(img) if img.dtype != np.uint8 else img)
    if mode != pil.mode:
        pil = pil.convert(mode)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        pil.save(path, quality=95)
    else:
        pil.save(path)


def _label_value(v: float | None) -> str:
    return "" if v is None else f"{float(v):.1f}"


# DICOM encodings cycled over images: (photometric, bits allocated, bits stored, signed, slope, intercept).
DICOM_VARIANTS = (
    ("MONOCHROME2", 8, 8, 0, None, None),
    ("MONOCHROME2", 16, 12, 0, None, None),
    ("MONOCHROME1", 16, 12, 0, None, None),
    ("MONOCHROME2", 16, 12, 0, 0.5, -1024.0),
    ("MONOCHROME1", 8, 8, 0, None, None),
    ("MONOCHROME2", 16, 16, 1, 2.0, 100.0),
)


def _uid(rng: np.random.Generator, root: str) -> str:
    return f"{root}.{rng.integers(1000, 20000)}.{rng.integers(1517870000, 1517880000)}.{rng.integers(100000, 999999)}"


@functools.lru_cache(maxsize=32)
def _dicom_template(variant: int, rows: int, columns: int):
    """The constant part of a fixture DICOM of one encoding (building it is most of the cost of a file)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    photometric, bits, stored_bits, signed, slope, intercept = DICOM_VARIANTS[variant]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture (as in RSNA / SIIM)
    meta.MediaStorageSOPInstanceUID = "1.2"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("fixture.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.PatientSex = "M"
    ds.PatientAge = "050Y"
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ConversionType = "WSD"
    ds.StudyDate = "19010101"
    ds.PixelSpacing = [0.168, 0.168]
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = stored_bits
    ds.HighBit = stored_bits - 1
    ds.PixelRepresentation = signed
    if slope is not None:
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "US"
    if bits == 16:  # a VOI window spanning the modality range, as many CR exports carry
        lo, hi = _stored_range(stored_bits, signed)
        m_lo, m_hi = (lo * (slope or 1) + (intercept or 0)), (hi * (slope or 1) + (intercept or 0))
        ds.WindowCenter = f"{(m_lo + m_hi) / 2:g}"
        ds.WindowWidth = f"{m_hi - m_lo:g}"
    return ds


def _stored_range(stored_bits: int, signed: int) -> tuple[int, int]:
    return (-(2 ** (stored_bits - 1)), 2 ** (stored_bits - 1) - 1) if signed else (0, 2 ** stored_bits - 1)


def write_dicom(path: Path, img: np.ndarray, variant: int, *, patient_id: str, sop_uid: str, study_uid: str,
                series_uid: str, view: str = "PA") -> None:
    """Write ``img`` (float [0, 1], 1 = dense) as an uncompressed single-frame DICOM in encoding ``variant``
    (cycled over :data:`DICOM_VARIANTS`).

    Stored values span the full stored range; after the modality LUT (RescaleSlope/Intercept), min-max display
    and MONOCHROME1 inversion the picture equals ``img`` up to quantisation.
    """
    variant = variant % len(DICOM_VARIANTS)
    photometric, bits, stored_bits, signed, _, _ = DICOM_VARIANTS[variant]
    lo, hi = _stored_range(stored_bits, signed)
    v = 1.0 - img if photometric == "MONOCHROME1" else img
    values = np.round(lo + v * (hi - lo)).astype(np.int64)
    dtype = {(8, 0): np.uint8, (16, 0): np.uint16, (16, 1): np.int16}[(bits, signed)]
    ds = _dicom_template(variant, *img.shape)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.ViewPosition = view
    ds.PixelData = values.astype(dtype).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# ---------------------------------------------------------------------------------------------- MIMIC


def _hex_id(rng: np.random.Generator) -> str:
    return "-".join(f"{int(x):08x}" for x in rng.integers(0, 2 ** 32, size=5))


def _write_mimic(raw: Path, cfg: DemoConfig, rng: np.random.Generator) -> dict:
    S = cfg.image_size
    n_eval = max(2, cfg.n_train // 40)
    splits = ["train"] * cfg.n_train + ["validate"] * n_eval + ["test"] * n_eval
    subjects = rng.choice(np.arange(10_000_000, 20_000_000), size=len(splits), replace=False)
    studies = rng.choice(np.arange(50_000_000, 60_000_000), size=len(splits), replace=False)
    meta, split_rows, chexpert_rows = [], [], []
    i, n_images, n_lateral = 0, 0, 0
    while i < len(splits):  # subjects of 1-3 consecutive studies within one split
        k = int(min(rng.integers(1, 4), len(splits) - i))
        while splits[i + k - 1] != splits[i]:
            k -= 1
        subject = int(subjects[i])
        for j in range(i, i + k):
            study = int(studies[j])
            folder = raw / "files" / f"p{str(subject)[:2]}" / f"p{subject}"
            findings = _sample_findings(rng)
            view = "PA" if rng.random() < 0.6 else "AP"
            text, labels = write_report_text(findings, rng, view)
            _write_text(folder / f"s{study}.txt", text)
            strengths = {n: (0.6 if v < 0 else 1.0) for n, v in findings.items()}
            img, _ = render_chest(S, strengths, rng)
            views = [(view, img)]
            if rng.random() < 0.3:
                views.append(("LATERAL" if rng.random() < 0.8 else "LL", render_lateral(S, rng)))
                n_lateral += 1
            date = f"21{rng.integers(10, 90)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
            for vp, pixels in views:
                dicom_id = _hex_id(rng)
                _save_image(folder / f"s{study}" / f"{dicom_id}.jpg", pixels)
                lateral = vp in ("LATERAL", "LL")
                meta.append([dicom_id, subject, study, "CHEST (PA AND LAT)", vp, S, S, date,
                             f"{rng.integers(0, 235959):06d}.{rng.integers(0, 999):03d}", "CHEST (PA AND LAT)",
                             "lateral" if lateral else ("postero-anterior" if vp == "PA" else "antero-posterior"),
                             "Erect"])
                split_rows.append([dicom_id, study, subject, splits[j]])
                n_images += 1
            chexpert_rows.append([subject, study] + [_label_value(labels.get(c)) for c in MIMIC_LABEL_COLUMNS])
        i += k
    order = rng.permutation(len(chexpert_rows))  # a different row order than the metadata: join by key
    chexpert_rows = [chexpert_rows[o] for o in order]
    meta_cols = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                 "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                 "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
    _write_text(raw / "mimic-cxr-2.0.0-metadata.csv.gz", _csv_text(meta_cols, meta), gz=True)
    _write_text(raw / "mimic-cxr-2.0.0-split.csv.gz",
                _csv_text(["dicom_id", "study_id", "subject_id", "split"], split_rows), gz=True)
    _write_text(raw / "mimic-cxr-2.0.0-chexpert.csv.gz",
                _csv_text(["subject_id", "study_id", *MIMIC_LABEL_COLUMNS], chexpert_rows), gz=True)
    return {"images": n_images, "studies": len(splits), "lateral_images": n_lateral,
            "train_studies": cfg.n_train, "validate_studies": n_eval, "test_studies": n_eval}


# ------------------------------------------------------------------------------------------- CheXpert


def _write_chexpert(raw: Path, cfg: DemoConfig, rng: np.random.Generator) -> dict:
    S, n = cfg.image_size, cfg.n_per_class
    others = [f for f in CHEXPERT_FINDINGS if f not in ("No Finding",) and f not in CHEXPERT_5X200]
    cases: list[tuple[str, dict[str, int]]] = []
    for cls in CHEXPERT_5X200:
        cases += [("pure", {cls: 1})] * n
    for _ in range(max(1, n // 2)):
        a, b = rng.choice(len(CHEXPERT_5X200), 2, replace=False)
        cases.append(("multi", {CHEXPERT_5X200[a]: 1, CHEXPERT_5X200[b]: 1}))
        c = CHEXPERT_5X200[rng.integers(5)]
        cases.append(("uncertain", {c: 1, others[rng.integers(len(others))]: -1}))
        cases.append(("normal", {}))
        cases.append(("other", {others[rng.integers(len(others))]: 1}))
    order = rng.permutation(len(cases))
    rows, n_lateral = [], 0
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_FINDINGS]
    for pid, idx in enumerate(order, start=1):
        kind, findings = cases[idx]
        values: dict[str, float | None] = {}
        for f in CHEXPERT_FINDINGS[1:]:
            values[f] = float(findings[f]) if f in findings else (0.0 if rng.random() < 0.15 else None)
        if not any(v == 1 for f, v in values.items() if f not in NON_PATHOLOGY):
            values["No Finding"] = 1.0
        study = f"CheXpert-v1.0-small/train/patient{pid:05d}/study{int(rng.integers(1, 4))}"
        sex, age = ("Male", "Female")[int(rng.integers(2))], int(rng.integers(18, 91))
        strengths = {f: (0.6 if v < 0 else 1.0) for f, v in findings.items()}
        img, _ = render_chest(S, strengths, rng)
        ap = "AP" if rng.random() < 0.7 else "PA"
        views = [(f"{study}/view1_frontal.jpg", "Frontal", ap, img)]
        if rng.random() < 0.2:
            views.append((f"{study}/view2_lateral.jpg", "Lateral", "", render_lateral(S, rng)))
            n_lateral += 1
        for path, fl, appa, pixels in views:
            _save_image(raw / path, pixels)
            rows.append([path, sex, age, fl, appa] + [_label_value(values.get(f)) for f in CHEXPERT_FINDINGS])
    _write_text(raw / "CheXpert-v1.0-small" / "train.csv", _csv_text(header, rows))
    return {"images": len(rows), "frontal_single_label_per_class": n, "lateral_images": n_lateral}


# ------------------------------------------------------------------------------------------------ NIH


def _write_nih14(raw: Path, cfg: DemoConfig, rng: np.random.Generator) -> dict:
    S = cfg.image_size
    n_images = len(NIH_FINDINGS) * cfg.n_per_class
    names, patients = [], []
    pid = 0
    while len(names) < n_images:
        pid += 1
        for fu in range(int(rng.integers(1, 4))):
            names.append(f"{pid:08d}_{fu:03d}.png")
            patients.append(pid)
    names, patients = names[:n_images], patients[:n_images]
    unique = sorted(set(patients))
    test_patients = set(rng.choice(unique, size=max(1, int(round(0.7 * len(unique)))), replace=False).tolist())
    test = [nm for nm, p in zip(names, patients) if p in test_patients]
    trainval = [nm for nm, p in zip(names, patients) if p not in test_patients]
    labels: dict[str, list[str]] = {}
    for group in (test, trainval):  # round-robin findings so every contiguous chunk is balanced
        for k, nm in enumerate(group):
            if rng.random() < 0.3:
                labels[nm] = []
            else:
                first = NIH_FINDINGS[k % len(NIH_FINDINGS)]
                extra = [NIH_FINDINGS[rng.integers(len(NIH_FINDINGS))]] if rng.random() < 0.3 else []
                labels[nm] = sorted({first, *extra}, key=NIH_FINDINGS.index)
    rows = []
    for k, (nm, p) in enumerate(zip(names, patients)):
        found = labels[nm]
        img, _ = render_chest(S, {NIH_PATTERN[f]: 1.0 for f in found}, rng)
        folder = "images_001" if k < len(names) // 2 else "images_002"
        pixels = _to_uint8(img)
        if k % 50 == 7:  # a few NIH PNGs are RGBA in the real archive
            pixels = np.dstack([pixels] * 3 + [np.full_like(pixels, 255)])
        _save_image(raw / folder / "images" / nm, pixels, mode="RGBA" if pixels.ndim == 3 else "L")
        rows.append([nm, "|".join(found) or "No Finding", int(nm[9:12]), p, int(rng.integers(18, 90)),
                     "M" if rng.random() < 0.55 else "F", "PA" if rng.random() < 0.6 else "AP", S, S, 0.143, 0.143])
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
    _write_text(raw / "Data_Entry_2017_v2020.csv", _csv_text(header, rows))
    _write_text(raw / "test_list.txt", "".join(f"{nm}\n" for nm in test))
    _write_text(raw / "train_val_list.txt", "".join(f"{nm}\n" for nm in trainval))
    return {"images": len(rows), "test_list": len(test), "train_val_list": len(trainval),
            "per_finding": {f: sum(f in v for v in labels.values()) for f in NIH_FINDINGS}}


# ----------------------------------------------------------------------------------------------- RSNA


def _distractor(rng: np.random.Generator, p: float = 0.25) -> dict[str, float]:
    return {_DISTRACTORS[rng.integers(len(_DISTRACTORS))]: 1.0} if rng.random() < p else {}


def images_per_class(dataset: str, cfg: DemoConfig) -> int:
    """Images written per class of a binary chest set (RSNA, SIIM): enough for ``n_per_class`` test images."""
    return int(np.ceil(cfg.n_per_class / TEST_FRACTION[dataset] - 1e-9))


def _write_rsna(raw: Path, cfg: DemoConfig, rng: np.random.Generator) -> dict:
    S, n = 2 * cfg.image_size, images_per_class("rsna", cfg)
    targets = rng.permutation([0] * n + [1] * n)
    records = []
    n_boxes = 0
    for k, target in enumerate(targets):
        pid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        findings = {"Pneumonia": 1.0} if target else _distractor(rng)
        img, masks = render_chest(S, findings, rng)
        write_dicom(raw / "stage_2_train_images" / f"{pid}.dcm", img, k, patient_id=pid,
                    sop_uid=_uid(rng, "1.2.276.0.7230010.3.1.4.8323329"),
                    study_uid=_uid(rng, "1.2.276.0.7230010.3.1.2.8323329"),
                    series_uid=_uid(rng, "1.2.276.0.7230010.3.1.3.8323329"), view="PA" if k % 2 else "AP")
        if target:
            for m in masks["Pneumonia"]:
                x, y, w, h = _bbox(m)
                records.append([pid, f"{x:.1f}", f"{y:.1f}", f"{w:.1f}", f"{h:.1f}", 1])
                n_boxes += 1
        else:
            records.append([pid, "", "", "", "", 0])
    records.sort(key=lambda r: r[0])
    _write_text(raw / "stage_2_train_labels.csv", _csv_text(["patientId", "x", "y", "width", "height", "Target"],
                                                             records))
    return {"images": len(targets), "positive": n, "boxes": n_boxes, "rows": len(records), "dicom_size": S}


# ----------------------------------------------------------------------------------------------- SIIM


def _write_siim(raw: Path, cfg: DemoConfig, rng: np.random.Generator) -> dict:
    S, n = 2 * cfg.image_size, images_per_class("siim", cfg)
    targets = rng.permutation([0] * n + [1] * n)
    rows, n_components = [], 0
    for k, target in enumerate(targets):
        image_id = _uid(rng, "1.2.276.0.7230010.3.1.4.8323329")
        study, series = _uid(rng, "1.2.276.0.7230010.3.1.2.8323329"), _uid(rng, "1.2.276.0.7230010.3.1.3.8323329")
        findings = {"Pneumothorax": 1.0} if target else _distractor(rng)
        img, masks = render_chest(S, findings, rng)
        write_dicom(raw / "dicom-images-train" / study / series / f"{image_id}.dcm", img, k + 3,
                    patient_id=image_id.split(".")[-3], sop_uid=image_id, study_uid=study, series_uid=series)
        if target:
            for m in masks["Pneumothorax"]:
                rows.append(f"{image_id}, {encode_rle(m)}\n")
                n_components += 1
        else:
            rows.append(f"{image_id}, -1\n")
    _write_text(raw / "train-rle.csv", "ImageId, EncodedPixels\n" + "".join(rows))
    return {"images": len(targets), "positive": n, "components": n_components, "rows": len(rows), "dicom_size": S}


# ------------------------------------------------------------------------------------ histopathology

# class -> (background RGB, nucleus RGB, nuclei per image, nucleus radius (px at 64), gland kind)
_HISTO_STYLES = {
    "HP": ((236, 180, 205), (110, 60, 150), 18, 1.6, "round"),
    "SSA": ((225, 150, 190), (80, 35, 125), 30, 2.0, "serrated"),
    "lung_aca": ((230, 160, 200), (90, 40, 140), 40, 2.0, "round"),
    "lung_n": ((245, 205, 220), (120, 70, 160), 10, 1.4, "holes"),
    "lung_scc": ((240, 140, 170), (70, 30, 110), 55, 2.6, "none"),
    "colon_aca": ((215, 130, 185), (60, 25, 115), 60, 2.2, "serrated"),
    "colon_n": ((240, 195, 215), (115, 65, 155), 20, 1.5, "crypts"),
}


def render_histo(size: int, cls: str, rng: np.random.Generator) -> np.ndarray:
    """An H&E-like RGB tile (uint8, (size, size, 3)) whose colour and texture depend on ``cls``."""
    bg, nucleus, count, radius, glands = _HISTO_STYLES[cls]
    s = size / 64
    base = np.array(bg, dtype=np.float64) + rng.normal(0, 6, size=3)
    img = Image.fromarray(np.clip(base + rng.normal(0, 8, size=(size, size, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    if glands in ("round", "serrated", "crypts", "holes"):
        n_glands = {"round": 3, "serrated": 3, "crypts": 6, "holes": 7}[glands]
        for g in range(n_glands):
            if glands == "crypts":
                cx, cy = (g % 3 + 0.5) * size / 3, (g // 3 + 0.5) * size / 2
            else:
                cx, cy = rng.uniform(0.15, 0.85, size=2) * size
            r = rng.uniform(6, 10) * s
            if glands == "serrated":
                angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
                radii = r * np.where(np.arange(16) % 2 == 0, 1.0, 0.65)
                pts = [(cx + q * np.cos(a), cy + q * 1.4 * np.sin(a)) for a, q in zip(angles, radii)]
                draw.polygon(pts, fill=(250, 240, 245), outline=tuple(nucleus))
            elif glands == "holes":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(252, 248, 250))
            else:
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(250, 240, 245), outline=tuple(nucleus),
                             width=max(1, int(2 * s)))
    for _ in range(count):
        cx, cy = rng.uniform(0, size, size=2)
        r = radius * s * rng.uniform(0.8, 1.25)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(c) for c in nucleus + rng.normal(0, 10, 3)))
    return np.asarray(img)


def _write_mhist(raw: Path, cfg: DemoConfig, rng: np.random.Generator) -> dict:
    n = cfg.n_per_class
    cases = [(lab, part) for part in ("train", "test") for lab in ("HP", "SSA") for _ in range(n)]
    cases = [cases[i] for i in rng.permutation(len(cases))]
    codes = sorted({"".join(chr(97 + int(c)) for c in rng.integers(0, 26, 3)) for _ in range(10 * len(cases))})
    codes = [codes[i] for i in sorted(rng.choice(len(codes), size=len(cases), replace=False))]
    rows = []
    for code, (lab, part) in zip(codes, cases):
        name = f"MHIST_{code}.png"
        _save_image(raw / "images" / name, render_histo(cfg.image_size, lab, rng), mode="RGB")
        votes = int(rng.integers(0, 4)) if lab == "HP" else int(rng.integers(4, 8))
        rows.append([name, lab, votes, part])
    header = ["Image Name", "Majority Vote Label", "Number of Annotators who Selected SSA (Out of 7)", "Partition"]
    _write_text(raw / "annotations.csv", _csv_text(header, rows))
    return {"images": len(rows), "test": 2 * n, "train": 2 * n}


_LC_FILE_PREFIX = {"lung_aca": "lungaca", "lung_n": "lungn", "lung_scc": "lungscc", "colon_aca": "colonca",
                   "colon_n": "colonn"}


def _write_lc25000(raw: Path, cfg: DemoConfig, rng: np.random.Generator) -> dict:
    root = raw / "lung_colon_image_set"
    for cls, prefix in _LC_FILE_PREFIX.items():
        organ = "lung_image_sets" if cls.startswith("lung") else "colon_image_sets"
        for k in range(1, cfg.n_per_class + 1):
            _save_image(root / organ / cls / f"{prefix}{k}.jpeg", render_histo(cfg.image_size, cls, rng), mode="RGB")
    return {"images": 5 * cfg.n_per_class, "per_class": cfg.n_per_class}


# ---------------------------------------------------------------------------------------------- public


_WRITERS = {"mimic": _write_mimic, "nih14": _write_nih14, "chexpert": _write_chexpert, "rsna": _write_rsna,
            "siim": _write_siim, "mhist": _write_mhist, "lc25000": _write_lc25000}


def write_fixture(dataset: str, raw_dir: Path, cfg: DemoConfig) -> dict:
    """Write synthetic data set ``dataset`` into ``raw_dir`` in its distributed raw layout; returns a summary.

    Deterministic for ``cfg`` (same files, same bytes). ``raw_dir`` is the data set folder itself
    (e.g. ``data/raw/mimic``); it is created if needed and should be empty.
    """
    if dataset not in _WRITERS:
        raise ValueError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    summary = _WRITERS[dataset](raw_dir, cfg, _rng(cfg, dataset))
    return {"dataset": dataset, "seed": cfg.seed, "image_size": cfg.image_size, **summary}


# ------------------------------------------------------------------------------------------ vocabulary

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_TOKEN = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")


def basic_tokens(text: str) -> list[str]:
    """Lower-cased words and single punctuation characters (BERT's basic tokenizer on ASCII text)."""
    return _TOKEN.findall(text.lower())


def demo_texts() -> list[str]:
    """Every text fragment the demo reports can contain, and the default prompts of every benchmark."""
    from ace_lora.config import PromptsConfig
    from ace_lora.prompts import BENCHMARK_CLASSES, build_prompts

    texts = [REPORT_SKELETON, "FINDINGS: IMPRESSION: Findings as above. No pleural effusion or pneumothorax.",
             *NORMAL_FINDINGS, *NORMAL_IMPRESSIONS, *INDICATIONS, *EXAMINATIONS.values(), *NEGATIONS.values(),
             *SENTENCES, *UNCERTAIN_SENTENCES, " and ", "No"]
    for verbatim, synonyms in REPORT_FORMS.values():
        texts += verbatim + synonyms
    prompts = build_prompts(PromptsConfig(), list(BENCHMARK_CLASSES))
    texts += [p for per_class in prompts.values() for plist in per_class.values() for p in plist]
    texts += list(CHEXPERT_FINDINGS) + list(NIH_FINDINGS)
    return [re.sub(r"\{[^}]*\}", " ", t) for t in texts]


def demo_vocabulary() -> list[str]:
    """The tiny preset's WordPiece vocabulary: special tokens ([PAD] = 0), every demo word and punctuation mark,
    then single characters and their ``##`` continuations so that no ASCII word maps to [UNK]."""
    words = sorted({tok for text in demo_texts() for tok in basic_tokens(text)})
    chars = [c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    punct = [c for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"]
    vocab = list(SPECIAL_TOKENS)
    for tok in words + chars + punct + [f"##{c}" for c in chars]:
        if tok not in vocab:
            vocab.append(tok)
    return vocab


#: The shipped vocabulary of the tiny preset (one token a line, [PAD] = 0); regenerate with :func:`write_vocab`.
TINY_VOCAB_FILE = Path(__file__).resolve().parent.parent / "assets" / "tiny_vocab.txt"


def write_vocab(path: Path = TINY_VOCAB_FILE, vocab: list[str] | None = None) -> Path:
    """Write the vocabulary as ``vocab.txt``-style text (the tiny preset's asset by default)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{tok}\n" for tok in (vocab or demo_vocabulary())))
    return path


def write_tokenizer(out_dir: Path, vocab: list[str] | None = None) -> Path:
    """Write a ``BertTokenizerFast.from_pretrained``-loadable folder (vocab.txt + tokenizer_config.json)."""
    out_dir = Path(out_dir)
    write_vocab(out_dir / "vocab.txt", vocab)
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "tokenize_chinese_chars": True,
              "strip_accents": None, "model_max_length": 40, "pad_token": "[PAD]", "unk_token": "[UNK]",
              "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir
