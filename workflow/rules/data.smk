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
    resources:
        mem_mb=4000,
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
