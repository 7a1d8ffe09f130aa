# fetch needs the internet: on a cluster it runs on the submitting machine, not on a compute node.
localrules:
    fetch,


rule fetch:
    input:
        code=stage_code("fetch"),
    output:
        f"{RAW}/{{dataset}}.fetched.json",
    params:
        ace=ACE,
        **stage_params("fetch"),
    wildcard_constraints:
        dataset="|".join(DATASETS),
    retries: 2
    conda:
        ENV
    resources:
        mem_mb=2000 if REAL_DATA else 1000,
        runtime=720 if REAL_DATA else 15,
    benchmark:
        timing("fetch", "{dataset}")
    log:
        f"{RESULTS}/logs/fetch/{{dataset}}.log",
    shell:
        "{params.ace} fetch {wildcards.dataset} 2> {log}"


rule prepare:
    input:
        fetched=f"{RAW}/{{dataset}}.fetched.json",
        code=stage_code("prepare"),
    output:
        directory(f"{PROCESSED}/{{dataset}}"),
    params:
        ace=ACE,
        **stage_params("prepare"),
    wildcard_constraints:
        dataset="|".join(DATASETS),
    # Worker processes decode images in parallel: Snakemake exports the job's threads (capped at --cores) as
    # OMP_NUM_THREADS, which sets the stage's worker count.
    threads: 8
    resources:
        mem_mb=8000 if REAL_DATA else 1000,
        runtime=240 if REAL_DATA else 15,  # minutes (SLURM time limit)
    conda:
        ENV
    benchmark:
        timing("prepare", "{dataset}")
    log:
        f"{RESULTS}/logs/prepare/{{dataset}}.log",
    shell:
        "{params.ace} prepare {wildcards.dataset} 2> {log}"


rule prompts:
    input:
        code=stage_code("prompts"),
    output:
        PROMPTS,
    params:
        ace=ACE,
        **stage_params("prompts"),
    conda:
        ENV
    benchmark:
        timing("prompts")
    log:
        f"{RESULTS}/logs/prompts.log",
    shell:
        "{params.ace} prompts 2> {log}"
