rule fetch:
    input:
        code=stage_code("fetch"),
    output:
        f"{RAW}/{{dataset}}.fetched.json",
    params:
        **stage_params("fetch"),
    wildcard_constraints:
        dataset="|".join(DATASETS),
    retries: 2
    benchmark:
        timing("fetch", "/{dataset}")
    log:
        f"{RESULTS}/logs/fetch/{{dataset}}.log",
    shell:
        "{ACE} fetch {wildcards.dataset} 2> {log}"


rule prepare:
    input:
        fetched=f"{RAW}/{{dataset}}.fetched.json",
        code=stage_code("prepare"),
    output:
        directory(f"{PROCESSED}/{{dataset}}"),
    params:
        **stage_params("prepare"),
    wildcard_constraints:
        dataset="|".join(DATASETS),
    resources:
        mem_mb=4000,
    benchmark:
        timing("prepare", "/{dataset}")
    log:
        f"{RESULTS}/logs/prepare/{{dataset}}.log",
    shell:
        "{ACE} prepare {wildcards.dataset} 2> {log}"


rule prompts:
    input:
        code=stage_code("prompts"),
    output:
        PROMPTS,
    params:
        **stage_params("prompts"),
    benchmark:
        timing("prompts")
    log:
        f"{RESULTS}/logs/prompts.log",
    shell:
        "{ACE} prompts 2> {log}"
