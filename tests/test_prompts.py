"""Prompts: defaults per benchmark, overrides from params, the prompts file round trip and its errors."""

import json

import pytest

from ace_lora.config import PromptsConfig
from ace_lora.prompts import (
    BENCHMARK_CLASSES,
    BENCHMARK_DOMAINS,
    DEFAULT_TEMPLATES,
    PromptsError,
    build_prompts,
    read_prompts,
    write_prompts,
)

AGREED_CLASSES = {
    "chexpert5x200": ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"],
    "rsna": ["Normal", "Pneumonia"],
    "siim": ["Normal", "Pneumothorax"],
    "mhist": ["HP", "SSA"],
    "lc25000_lung": ["lung_aca", "lung_n", "lung_scc"],
    "lc25000_colon": ["colon_aca", "colon_n"],
    "nih14": [
        "Atelectasis",
        "Cardiomegaly",
        "Effusion",
        "Infiltration",
        "Mass",
        "Nodule",
        "Pneumonia",
        "Pneumothorax",
        "Consolidation",
        "Edema",
        "Emphysema",
        "Fibrosis",
        "Pleural_Thickening",
        "Hernia",
    ],
}


@pytest.mark.parametrize("bench", sorted(AGREED_CLASSES))
def test_default_classes_and_prompts(bench):
    prompts = build_prompts(PromptsConfig(), [bench])[bench]
    assert list(prompts)[: len(AGREED_CLASSES[bench])] == AGREED_CLASSES[bench]
    domain = BENCHMARK_DOMAINS[bench]
    assert domain == ("histopathology" if bench in ("mhist", "lc25000_lung", "lc25000_colon") else "chest")
    for label, texts in prompts.items():
        assert len(texts) == len(DEFAULT_TEMPLATES[domain]) and len(set(texts)) == len(texts)
        assert all("{}" not in t for t in texts)


def test_chest_templates_are_the_reference_ones():
    p = build_prompts(PromptsConfig(), ["chexpert5x200"])["chexpert5x200"]
    assert p["Pleural Effusion"] == [
        "a chest X-ray image of pleural effusion.",
        "Findings suggesting pleural effusion.",
    ]
    h = build_prompts(PromptsConfig(), ["mhist"])["mhist"]
    assert any("sessile serrated adenoma" in t for t in h["SSA"]) and any("hyperplastic polyp" in t for t in h["HP"])


def test_multilabel_benchmarks_carry_a_no_finding_negative():
    assert "No Finding" in build_prompts(PromptsConfig(), ["nih14"])["nih14"]


def test_overrides_replace_templates_and_named_labels_only():
    cfg = PromptsConfig(
        templates={"chest": ["an x-ray showing {}"]},
        class_names={"rsna": {"Pneumonia": ["lung infection", "pneumonia"]}},
    )
    p = build_prompts(cfg, ["rsna", "mhist"])
    assert p["rsna"]["Pneumonia"] == ["an x-ray showing lung infection", "an x-ray showing pneumonia"]
    assert p["rsna"]["Normal"] == ["an x-ray showing No Finding"]  # the reference's negative phrase
    assert p["mhist"] == build_prompts(PromptsConfig(), ["mhist"])["mhist"]  # other domain untouched


@pytest.mark.parametrize(
    "cfg, match",
    [
        (PromptsConfig(class_names={"rsna": {"Pneumonitis": "x"}}), "Pneumonitis"),
        (PromptsConfig(class_names={"nope": {"A": "x"}}), "nope"),
        (PromptsConfig(templates={"dermatology": ["{}"]}), "dermatology"),
    ],
)
def test_bad_overrides_name_the_key(cfg, match):
    with pytest.raises(PromptsError, match=match):
        build_prompts(cfg, ["rsna"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"templates": {"chest": ["no placeholder"]}}, r"prompts\.templates\.chest: .*exactly one '\{\}' field"),
        ({"class_names": {"rsna": {"Normal": []}}}, r"prompts\.class_names\.rsna\.Normal"),
    ],
)
def test_malformed_overrides_are_refused_when_params_load(kwargs, match):
    from ace_lora.config import ParamsError

    with pytest.raises(ParamsError, match=match):
        PromptsConfig(**kwargs)


def test_unknown_benchmark():
    with pytest.raises(PromptsError, match="unknown benchmark 'imagenet'"):
        build_prompts(PromptsConfig(), ["imagenet"])


def test_write_read_round_trip(tmp_path):
    prompts = build_prompts(PromptsConfig(), list(BENCHMARK_CLASSES))
    path = write_prompts(prompts, tmp_path / "sub" / "prompts.json")
    assert json.loads(path.read_text()) == prompts
    assert not [p for p in path.parent.iterdir() if p.name != "prompts.json"]  # no temp file left
    got = read_prompts(path, "lc25000_lung", ["lung_scc", "lung_aca", "lung_n"])
    assert list(got) == ["lung_scc", "lung_aca", "lung_n"]
    assert got["lung_n"] == prompts["lc25000_lung"]["lung_n"]
    nih = read_prompts(path, "nih14", AGREED_CLASSES["nih14"])
    assert list(nih)[-1] == "No Finding"  # extra classes of the file follow the requested ones


def test_read_errors_name_what_is_missing(tmp_path):
    path = write_prompts(build_prompts(PromptsConfig(), ["rsna"]), tmp_path / "prompts.json")
    with pytest.raises(PromptsError, match="'Pneumothorax'"):
        read_prompts(path, "rsna", ["Normal", "Pneumothorax"])
    with pytest.raises(PromptsError, match="benchmark 'siim'"):
        read_prompts(path, "siim", ["Normal", "Pneumothorax"])
    with pytest.raises(PromptsError, match="not found"):
        read_prompts(tmp_path / "absent.json", "rsna", ["Normal"])


def test_classes_agree_with_the_benchmark_registry():
    from ace_lora.data import benchmarks

    for name, spec in benchmarks.BENCHMARKS.items():
        assert name in BENCHMARK_CLASSES, name
        assert set(spec.classes) <= set(BENCHMARK_CLASSES[name]), name
        assert spec.domain == BENCHMARK_DOMAINS[name], name


def test_negative_phrase_of_rsna_and_siim_is_the_reference_one_by_default():
    p = build_prompts(PromptsConfig(), ["rsna", "siim", "nih14"])
    assert p["rsna"]["Normal"] == ["a chest X-ray image of No Finding.", "Findings suggesting No Finding."]
    assert p["siim"]["Normal"] == ["a chest X-ray image of No Finding.", "Findings suggesting No Finding."]
    assert p["nih14"]["No Finding"] == [
        "a chest X-ray image of no acute findings.",
        "Findings suggesting no acute findings.",
    ]  # no reference counterpart
    ours = build_prompts(PromptsConfig(negative="no_acute_findings"), ["rsna_det", "siim_seg"])
    assert ours["rsna_det"]["Normal"] == [
        "a chest X-ray image of no acute findings.",
        "Findings suggesting no acute findings.",
    ]
    assert ours["siim_seg"]["Normal"][0] == "a chest X-ray image of no acute findings."
    explicit = build_prompts(PromptsConfig(class_names={"rsna": {"Normal": "normal lungs"}}), ["rsna"])
    assert explicit["rsna"]["Normal"][0] == "a chest X-ray image of normal lungs."  # class_names wins
    with pytest.raises(PromptsError, match="prompts.negative"):
        build_prompts(PromptsConfig(negative="nothing"), ["rsna"])
