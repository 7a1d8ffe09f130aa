rule train:
    input:
        mimic=f"{PROCESSED}/mimic",
        validation=f"{PROCESSED}/{VALIDATION}",
        prompts=PROMPTS,
        code=stage_code("train"),
    output:
        trained=directory(f"{RESULTS}/train/{{method}}"),
        metrics=f"{RESULTS}/metrics/train/{{method}}.json",
        log=f"{RESULTS}/plots/train/{{method}}.csv",
        val_log=f"{RESULTS}/plots/train/{{method}}_val.csv",
    params:
        ace=ACE,
        **stage_params("train"),
    wildcard_constraints:
        method="|".join(METHODS),
    # Training uses every core it is given; on a cluster the profile asks for GPUs (workflow/profiles/slurm).
    threads: 64  # Snakemake caps it at --cores: training uses every core it gets
    resources:
        mem_mb=16000,
        gpu=0,
    retries: 1  # a retry resumes from the method's last checkpoint (--resume)
    conda:
        ENV
    benchmark:
        timing("train", "{method}")
    log:
        f"{RESULTS}/logs/train/{{method}}.log",
    shell:
        "{params.ace} train {wildcards.method} --resume 2> {log}"
