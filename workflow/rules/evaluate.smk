rule evaluate:
    input:
        trained=f"{RESULTS}/train/{{method}}",
        data=f"{PROCESSED}/{{dataset}}",
        prompts=PROMPTS,
        code=stage_code("evaluate"),
    output:
        artifacts=directory(f"{RESULTS}/evaluate/{{method}}/{{dataset}}"),
        metrics=f"{RESULTS}/metrics/evaluate/{{method}}/{{dataset}}.json",
    params:
        ace=ACE,
        **stage_params("evaluate"),
    wildcard_constraints:
        method="|".join(METHODS),
        dataset="|".join(DATASETS),
    # One thread per job (Snakemake exports it as OMP_NUM_THREADS), so evaluations run side by side; on a big CPU
    # machine raise it with --set-threads evaluate=N (the SLURM profile does).
    threads: 1
    resources:
        mem_mb=16000 if PAPER else 2000,
        runtime=120 if PAPER else 15,  # minutes
        gpu=EVALUATE_GPUS,
    conda:
        ENV
    benchmark:
        timing("evaluate", "{method}/{dataset}")
    log:
        f"{RESULTS}/logs/evaluate/{{method}}/{{dataset}}.log",
    shell:
        "{params.ace} evaluate {wildcards.method} {wildcards.dataset} 2> {log}"


# Sections of the results page (snakemake --report): folder under results/report -> category. Overlays are grouped
# by benchmark (their file names start with it).
REPORT_SECTIONS = {
    "tables": "1. Benchmark tables",
    "charts": "2. Benchmark charts",
    "roc": "3. ROC curves",
    "confusion": "4. Confusion matrices",
    "training": "5. Training",
    "overlays": "6. Grounding overlays",
}


rule report:
    input:
        metrics=expand(f"{RESULTS}/metrics/evaluate/{{method}}/{{dataset}}.json", method=METHODS, dataset=EVAL_DATASETS),
        evaluations=expand(f"{RESULTS}/evaluate/{{method}}/{{dataset}}", method=METHODS, dataset=EVAL_DATASETS),
        training=expand(f"{RESULTS}/metrics/train/{{method}}.json", method=METHODS),
        train_logs=expand(f"{RESULTS}/plots/train/{{method}}{{suffix}}.csv", method=METHODS, suffix=["", "_val"]),
        code=stage_code("report"),
    output:
        md=REPORT_MD,
        csv=report(REPORT_CSV, caption="../report/benchmarks.rst", category="1. Benchmark tables"),
        summary=f"{RESULTS}/metrics/summary.json",
        roc=directory(f"{RESULTS}/plots/roc"),
        confusion=directory(f"{RESULTS}/plots/confusion"),
        figures=report(
            directory(f"{RESULTS}/report"),
            patterns=["{section,[a-z]+}/{name,[^/]+}.png", "{section,[a-z]+}/{name,[^/]+}.html"],
            caption="../report/figures.rst",
            category=lambda wildcards: REPORT_SECTIONS[wildcards.section],
            subcategory=lambda wildcards: (
                "_".join(wildcards.name.split("_")[:2]) if wildcards.section == "overlays" else None
            ),
        ),
    params:
        ace=ACE,
        **stage_params("report"),
    conda:
        ENV
    benchmark:
        timing("report")
    log:
        f"{RESULTS}/logs/report.log",
    shell:
        "{params.ace} report > {log} 2>&1"
