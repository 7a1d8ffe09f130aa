"""Report prose of the synthetic demo: MIMIC-style free-text reports and the CheXpert labeller values they imply.

:func:`write_report_text` names a study's findings with the class phrases verbatim in most cases (otherwise with a
synonym), adds normal sentences and negations, and returns the labels a CheXpert labeller would read from the
text. :func:`sample_findings` draws the findings of a training study. Every phrase a report can contain is a
constant here, so that :mod:`ace_lora.demo.vocab` can derive the tiny preset's vocabulary from them.
"""

from __future__ import annotations

import numpy as np

# Report phrases: (verbatim forms containing the class phrase, synonym forms without it).
REPORT_FORMS = {
    "Atelectasis": (
        ["atelectasis", "left basilar atelectasis", "mild atelectasis"],
        ["volume loss at the left base", "subsegmental collapse"],
    ),
    "Cardiomegaly": (
        ["cardiomegaly", "mild cardiomegaly", "moderate cardiomegaly"],
        ["enlarged heart", "enlarged cardiac silhouette"],
    ),
    "Consolidation": (
        ["consolidation", "left upper lobe consolidation", "focal consolidation"],
        ["dense airspace disease"],
    ),
    "Edema": (
        ["edema", "pulmonary edema", "mild pulmonary edema", "interstitial edema"],
        ["vascular congestion", "kerley b lines"],
    ),
    "Pleural Effusion": (
        ["pleural effusion", "right pleural effusion", "small right pleural effusion"],
        ["right effusion", "blunting of the right costophrenic angle"],
    ),
    "Pneumonia": (
        ["pneumonia", "right lung pneumonia", "multifocal pneumonia"],
        ["infection", "airspace opacity concerning for infection"],
    ),
    "Pneumothorax": (["pneumothorax", "right apical pneumothorax", "small pneumothorax"], ["apical pleural air"]),
    "Enlarged Cardiomediastinum": (
        ["enlarged cardiomediastinum", "mildly enlarged cardiomediastinum"],
        ["widened mediastinum"],
    ),
    "Lung Opacity": (["lung opacity", "left lower lung opacity"], ["infiltration", "hazy opacity"]),
    "Lung Lesion": (["lung lesion", "left lung lesion"], ["nodule", "pulmonary nodule"]),
    "Pleural Other": (["pleural thickening", "right pleural thickening"], ["pleural scarring"]),
    "Fracture": (["fracture", "left rib fracture"], ["rib deformity"]),
    "Support Devices": (["support devices", "support devices in place"], ["endotracheal tube", "pacemaker"]),
}
SENTENCES = ["{F}.", "There is {f}.", "{F} is present.", "Evidence of {f}."]
UNCERTAIN_SENTENCES = ["Possible {f}.", "{F} cannot be excluded."]
NEGATIONS = {
    "Pleural Effusion": "pleural effusion",
    "Pneumothorax": "pneumothorax",
    "Consolidation": "focal consolidation",
    "Edema": "pulmonary edema",
}
NORMAL_FINDINGS = ["The lungs are clear.", "Heart size is normal.", "The cardiomediastinal silhouette is normal."]
NORMAL_IMPRESSIONS = ["No acute findings.", "No acute cardiopulmonary process.", "Normal chest radiograph."]
INDICATIONS = ["___M with cough.", "___F with shortness of breath.", "___M with fever.", "___F with chest pain."]
EXAMINATIONS = {"PA": "CHEST (PA AND LAT)", "AP": "CHEST (PORTABLE AP)"}
REPORT_SKELETON = (
    "                                 FINAL REPORT\n EXAMINATION:  {exam}\n \n"
    " INDICATION:  {indication}\n \n TECHNIQUE:  Chest radiograph.\n \n COMPARISON:  None.\n \n"
)
# Pathological findings (all but these two block "No Finding" in the CheXpert labeller convention).
NON_PATHOLOGY = {"No Finding", "Support Devices"}

# Sampling weights of MIMIC training findings: the CheXpert 5x200 classes and the RSNA/SIIM targets dominate.
_TRAIN_WEIGHTS = {
    "Atelectasis": 3,
    "Cardiomegaly": 3,
    "Consolidation": 3,
    "Edema": 3,
    "Pleural Effusion": 3,
    "Pneumonia": 2,
    "Pneumothorax": 2,
    "Enlarged Cardiomediastinum": 1,
    "Lung Opacity": 1,
    "Lung Lesion": 1,
    "Pleural Other": 1,
    "Fracture": 1,
    "Support Devices": 1,
}


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sentence(template: str, form: str) -> str:
    return template.replace("{F}", _cap(form)).replace("{f}", form)


def write_report_text(
    findings: dict[str, int], rng: np.random.Generator, view: str = "PA", verbatim: float = 0.85
) -> tuple[str, dict[str, float]]:
    """A MIMIC-style free-text report for ``findings`` {CheXpert name: 1 (positive) | -1 (uncertain)}.

    Returns (report text, CheXpert-labeller values {finding: 1.0 | 0.0 | -1.0}; absent = blank).
    """
    labels: dict[str, float] = {}
    sentences, impression = [], []
    for name, value in findings.items():
        verbatim_forms, synonyms = REPORT_FORMS[name]
        form = (
            verbatim_forms[rng.integers(len(verbatim_forms))]
            if rng.random() < verbatim or not synonyms
            else synonyms[rng.integers(len(synonyms))]
        )
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
        sentences = [NORMAL_FINDINGS[i] for i in sorted(rng.choice(len(NORMAL_FINDINGS), 2, replace=False))] + sentences
        if rng.random() < 0.6:
            sentences.append("No pleural effusion or pneumothorax.")
            labels.update({"Pleural Effusion": 0.0, "Pneumothorax": 0.0})
        impression_text = NORMAL_IMPRESSIONS[rng.integers(len(NORMAL_IMPRESSIONS))]
    else:
        if negatable and rng.random() < 0.4:
            neg = negatable[rng.integers(len(negatable))]
            sentences.append(f"No {NEGATIONS[neg]}.")
            labels[neg] = 0.0
        impression_text = (_cap(" and ".join(impression)) + ".") if impression else "Findings as above."
    findings_text = " ".join(sentences)
    body = REPORT_SKELETON.format(
        exam=EXAMINATIONS.get(view, EXAMINATIONS["PA"]), indication=INDICATIONS[rng.integers(len(INDICATIONS))]
    )
    if rng.random() < 0.9:
        body += f" FINDINGS:  \n \n {findings_text}\n \n"
    body += f" IMPRESSION:  \n \n {impression_text}\n"
    return body, labels


def sample_findings(rng: np.random.Generator, uncertain: float = 0.05) -> dict[str, int]:
    """0-2 findings of a MIMIC training study, weighted by :data:`_TRAIN_WEIGHTS`: {name: 1 | -1 (uncertain)}."""
    k = rng.choice([0, 1, 2], p=[0.25, 0.45, 0.30])
    names = list(_TRAIN_WEIGHTS)
    p = np.array([_TRAIN_WEIGHTS[n] for n in names], dtype=float)
    chosen = rng.choice(len(names), size=k, replace=False, p=p / p.sum())
    return {names[i]: (-1 if rng.random() < uncertain else 1) for i in sorted(chosen)}
