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
    # Training uses every core it is given (Snakemake caps threads at --cores) and the GPUs of train_gpus(): one
    # process per GPU. Under SLURM the job sees only the GPUs it was granted (CUDA_VISIBLE_DEVICES), and with
    # train.processes: null the stage starts one process per visible GPU, so processes always match the grant.
    threads: 64
    resources:
        mem_mb=64000 if PAPER else 2000,
        runtime=2880 if PAPER else 60,  # minutes
        gpu=train_gpus(),
    retries: 1  # a retry resumes from the method's last checkpoint (--resume)
    conda:
        ENV
    benchmark:
        timing("train", "{method}")
    log:
        f"{RESULTS}/logs/train/{{method}}.log",
    shell:
        "{params.ace} train {wildcards.method} --resume 2> {log}"
