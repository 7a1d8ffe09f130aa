# ace-lora pipeline, Snakemake declaration. dvc.yaml declares the same DAG over the same commands;
# tests/test_workflow.py fails when the two drift. Parameters: params.yaml only (edit it; not --config).
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "params.yaml"


validate(config, "workflow/schemas/params.schema.json")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    default_target: True
    input:
        REPORT_MD,
