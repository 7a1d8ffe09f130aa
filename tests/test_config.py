"""params.yaml -> typed config: validation errors name the key; methods resolve their overrides."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from ace_lora import config as C

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("params_file", ["params.yaml", "configs/paper.yaml"])
def test_shipped_params_files_are_valid(params_file):
    params = C.load_params(ROOT / params_file)
    schema = json.loads((ROOT / "workflow/schemas/params.schema.json").read_text())
    jsonschema.validate(yaml.safe_load((ROOT / params_file).read_text()), schema)
    for name in params.methods:
        C.resolve_method(params, name)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"model": {"lora": {"rank": 0}}}, "model.lora.rank"),
        ({"model": {"hgnn": {"towers": "sideways"}}}, "model.hgnn.towers"),
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"train": {"epochs": True}}, "train.epochs"),
        ({"train": {"learning_rate": 0.1}}, "train.learning_rate"),
        ({"model": {"lora": {"targets": ["q", "mlp"]}}}, "model.lora.targets"),
        ({"methods": {"m": {"hgnn": {"topk": 0}}}}, "methods.m.hgnn.topk"),
        ({"methods": {"m": {"lora": {"colour": 1}}}}, "methods.m.lora.colour"),
        ({"evaluate": {"datasets": ["imagenet"]}}, "evaluate.datasets"),
        ({"data": {"source": None}}, "data.source"),
        ({"methods": {"../../x": {}}}, "methods.../../x"),
        ({"methods": {"a`id`": {}}}, "methods.a`id`"),
        ({"train": {"grad_clip": -1}}, "train.grad_clip"),
        ({"train": {"max_steps": 0}}, "train.max_steps"),
        ({"train": {"lr": 0}}, "train.lr"),
        ({"train": {"betas": [0.9, 1.0]}}, "train.betas"),
        ({"train": {"betas": [0.9]}}, "train.betas"),
        ({"model": {"lora": {"dropout": 1.0}}}, "model.lora.dropout"),
        ({"paths": {"results": "a b"}}, "paths.results"),
        ({"prompts": {"templates": {"-x": ["{}"]}}}, "prompts.templates.-x"),
    ],
)
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(C.ParamsError, match=key.replace(".", r"\.")):
        C.build(C.Params, override)
    schema = C.schema()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(override, schema)


def test_load_params_reports_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: {batch_size: 1}\n")
    with pytest.raises(C.ParamsError, match=r"params\.yaml: train\.batch_size"):
        C.load_params(path)
    path.write_text("train: [\n")
    with pytest.raises(C.ParamsError, match="not valid YAML"):
        C.load_params(path)
    with pytest.raises(C.ParamsError, match="not found"):
        C.load_params(tmp_path / "missing.yaml")


def test_methods_override_model_and_loss_only_where_they_say():
    params = C.build(
        C.Params,
        {
            "model": {"lora": {"rank": 8}},
            "methods": {"plain": {"loss": {"label_guided": False}, "hgnn": {"towers": "image"}}},
        },
    )
    method, model, loss = C.resolve_method(params, "plain")
    assert method.train is True
    assert model.lora.rank == 8  # inherited
    assert model.hgnn.towers == "image" and model.hgnn.topk == 5
    assert loss.label_guided is False and loss.learnable_scale is True
    assert params.model.hgnn.towers == "both"  # the shared section is untouched
    with pytest.raises(C.ParamsError, match="methods.nope"):
        C.resolve_method(params, "nope")


def _config_keys(cls=C.Params, prefix=""):
    for f in dataclasses.fields(cls):
        yield prefix + f.name
        if dataclasses.is_dataclass(f.default_factory if callable(f.default_factory) else None):
            yield from _config_keys(f.default_factory, prefix + f.name + ".")


def test_schema_and_dataclasses_agree_on_every_key():
    def keys_of_schema(node, prefix=""):
        for name, sub in node.get("properties", {}).items():
            yield prefix + name
            yield from keys_of_schema(sub, prefix + name + ".")

    assert set(keys_of_schema(C.schema())) == set(_config_keys())


def test_every_parameter_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [key for key in _config_keys() if f"`{key}`" not in readme]
    assert not missing, f"README.md does not document: {missing}"


def test_readme_parameter_table_is_current():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- params:start -->\n", 1)[1].split("\n<!-- params:end -->", 1)[0]
    assert block.strip() == C.parameter_table().strip(), "run `python -m ace_lora schema --markdown` into README.md"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"train": {"lr": float("nan")}}, "train.lr"),
        ({"train": {"grad_clip": float("inf")}}, "train.grad_clip"),
        ({"evaluate": {"dataeff_fractions": [float("nan")]}}, "evaluate.dataeff_fractions[0]"),
        ({"prompts": {"templates": {"chest": ["{0}"]}}}, "prompts.templates.chest"),
        ({"prompts": {"templates": {"chest": ["{finding} in {}"]}}}, "prompts.templates.chest"),
    ],
)
def test_values_the_schema_cannot_express_are_refused_at_load(override, key):
    """NaN/inf and template fields: the loader refuses them (the Snakefile runs the same check)."""
    with pytest.raises(C.ParamsError, match=key.replace(".", r"\.").replace("[", r"\[")):
        C.build(C.Params, override)
