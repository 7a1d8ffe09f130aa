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


rule report:
    input:
        metrics=expand(f"{RESULTS}/metrics/evaluate/{{method}}/{{dataset}}.json", method=METHODS, dataset=EVAL_DATASETS),
        code=stage_code("report"),
    output:
        md=REPORT_MD,
        csv=report(REPORT_CSV, caption="../report/benchmarks.rst", category="Benchmarks"),
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
