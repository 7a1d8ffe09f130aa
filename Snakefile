# ace-lora pipeline, Snakemake declaration. dvc.yaml declares the same DAG over the same commands;
# tests/test_workflow.py fails when the two drift.
#
# One set of parameters per run: every job runs `python -m ace_lora --params params.yaml ...`, so params.yaml is
# the only configuration. `--configfile X` and `--config key=value` would not reach the jobs and are refused; to
# switch configurations, copy the file over params.yaml (`cp configs/paper.yaml params.yaml`) or edit it.
import yaml
from snakemake.utils import min_version, validate

from ace_lora.config import ParamsError, build, Params

min_version("9.0")


configfile: "params.yaml"


with open("params.yaml") as _file:
    if config != yaml.safe_load(_file):
        raise WorkflowError(
            "--configfile/--config do not reach the jobs, which read params.yaml: to switch configurations, "
            "copy the file over params.yaml (e.g. `cp configs/paper.yaml params.yaml`) or edit params.yaml, "
            "then run snakemake without --configfile/--config"
        )
validate(config, "workflow/schemas/params.schema.json")
try:  # the checks the schema cannot express (NaN, template fields): the stages' own loader, before any job runs
    build(Params, config)
except ParamsError as err:
    raise WorkflowError(f"params.yaml: {err}") from None


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    default_target: True
    input:
        REPORT_MD,
