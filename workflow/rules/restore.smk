# Per-sample chain: normalise → crop → train (GPU) → infer (GPU) → qc.


# bad_rows: fail_alone — a sheet row or inbox acquisition selfres refused: its sample's one job
# writes the refusal as its ERROR line (the summary's error) and fails, once (a retry would say it
# again); the others run
rule refused_row:
    output:
        f"{R}/{{sample}}/logs/refused_row",  # never made
    log:
        f"{R}/{{sample}}/logs/refused_row.log",
    params:
        message=lambda wildcards: REFUSED[wildcards.sample],
    retries: 0
    localrule: True
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres refused --sample {wildcards.sample:q} --message {params.message:q} > {log:q} 2>&1"


rule normalise:
    input:
        get_raw,
    output:
        directory(f"{R}/{{sample}}/normalized.ome.zarr"),
    log:
        f"{R}/{{sample}}/logs/normalise.log",
    benchmark:
        f"{R}/{{sample}}/benchmarks/normalise.tsv"
    params:
        raw=raw_path,
        args=normalise_args,
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres normalise {params.raw:q} -o {output:q} {params.args} > {log:q} 2>&1"


# A sample whose acquisition the start of the run found unreadable (FAILS_AT_NORMALISE): the same job,
# tried once — it would fail alike on each of the profile's retries
use rule normalise as normalise_once with:
    retries: 0
    wildcard_constraints:
        sample=once_constraint(FAILS_AT_NORMALISE),


ruleorder: normalise_once > normalise


rule crop:
    input:
        rules.normalise.output,
    output:
        f"{R}/{{sample}}/train_fov.json",
    log:
        f"{R}/{{sample}}/logs/crop.log",
    benchmark:
        f"{R}/{{sample}}/benchmarks/crop.tsv"
    params:
        args=crop_args,
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres crop {input:q} -o {output:q} {params.args} > {log:q} 2>&1"


# A sample the start of the run found unable to pass crop (FAILS_AT_CROP): tried once, as above
use rule crop as crop_once with:
    retries: 0
    wildcard_constraints:
        sample=once_constraint(FAILS_AT_CROP),


ruleorder: crop_once > crop


rule train:
    input:
        normalized=rules.normalise.output,
        fov=rules.crop.output,
        psf=get_training_psf,  # method psf: a replaced PSF file retrains
    output:
        directory(f"{R}/{{sample}}/model"),
    log:
        f"{R}/{{sample}}/logs/train.log",
    benchmark:
        f"{R}/{{sample}}/benchmarks/train.tsv"
    wildcard_constraints:
        sample=TRAINING,
    threads: MAX_THREADS
    params:
        args=train_args,
    resources:
        gpu=1,
        runtime=train_runtime,  # minutes: the sample's time budget, half as long again, plus an hour
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres train {input.normalized:q} {input.fov:q} -o {output:q} --threads {threads} {params.args} > {log:q} 2>&1"


# model_from: the model another sample trained, judged on this sample's held-out region
# (selfres.adopt) and written as this sample's model/; no GPU needed (held-out region only).
rule adopt:
    input:
        normalized=rules.normalise.output,
        fov=rules.crop.output,
        source=source_model,
        psf=get_training_psf,  # the source's PSF, which judging its model on this sample re-reads
    output:
        directory(f"{R}/{{sample}}/model"),
    log:
        f"{R}/{{sample}}/logs/adopt.log",
    benchmark:
        f"{R}/{{sample}}/benchmarks/adopt.tsv"
    wildcard_constraints:
        sample=ADOPTING,
    threads: MAX_THREADS
    params:
        args=adopt_args,
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres adopt {input.normalized:q} {input.fov:q} {input.source:q} -o {output:q} --threads {threads} "
        "{params.args} > {log:q} 2>&1"


# infer.blocks = 1: one job. A killed job resumes from the tiles it recorded in
# .restored.ome.zarr.partial (same model and settings; on a CPU's whole-volume back-projection
# path tiles are recorded only at the end); the store appears atomically.
rule infer:
    input:
        normalized=rules.normalise.output,
        model=rules.train.output,
        psf=get_model_psf,  # back-projection re-reads the training PSF
    output:
        directory(f"{R}/{{sample}}/restored.ome.zarr"),
    log:
        f"{R}/{{sample}}/logs/infer.log",
    benchmark:
        f"{R}/{{sample}}/benchmarks/infer.tsv"
    wildcard_constraints:
        sample=SINGLE_INFER,
    threads: MAX_THREADS
    params:
        args=infer_args,
    resources:
        gpu=1,
        execution=infer_execution,  # not params: changing these reruns nothing
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres infer {input.normalized:q} {input.model:q} -o {output:q} --threads {threads} --drop-stale-export "
        "{params.args} --execution {resources.execution:q} > {log:q} 2>&1"


# infer.blocks = N > 1: prepare the partial store, N block jobs (each its own GPU
# job under profiles/slurm) write their tiles into it, gather verifies every tile,
# builds the pyramid and moves the store into place. Output identical to N = 1.
rule infer_prepare:
    input:
        normalized=rules.normalise.output,
        model=rules.train.output,
        psf=get_model_psf,  # back-projection re-reads the training PSF
    output:
        f"{R}/{{sample}}/infer/prepared.json",
    log:
        f"{R}/{{sample}}/logs/infer_prepare.log",
    benchmark:
        f"{R}/{{sample}}/benchmarks/infer_prepare.tsv"
    wildcard_constraints:
        sample=SCATTERED_INFER,
    params:
        restored=f"{R}/{{sample}}/restored.ome.zarr",
        args=infer_step_args,
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres infer {input.normalized:q} {input.model:q} -o {params.restored:q} --step prepare "
        "--done {output:q} {params.args} > {log:q} 2>&1"


rule infer_block:
    input:
        normalized=rules.normalise.output,
        model=rules.train.output,
        prepared=rules.infer_prepare.output,
        psf=get_model_psf,
    output:
        f"{R}/{{sample}}/infer/block_{{block}}.json",
    log:
        f"{R}/{{sample}}/logs/infer_block_{{block}}.log",
    benchmark:
        f"{R}/{{sample}}/benchmarks/infer_block_{{block}}.tsv"
    wildcard_constraints:
        sample=SCATTERED_INFER,
        block=r"\d+",
    threads: MAX_THREADS
    params:
        restored=f"{R}/{{sample}}/restored.ome.zarr",
        args=infer_step_args,
    resources:
        gpu=1,
        execution=infer_execution,  # not params: changing these reruns nothing
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres infer {input.normalized:q} {input.model:q} -o {params.restored:q} --step block "
        "--done {output:q} --threads {threads} {params.args} --execution {resources.execution:q} > {log:q} 2>&1"


rule infer_gather:
    input:
        normalized=rules.normalise.output,
        model=rules.train.output,
        blocks=get_infer_blocks,
        psf=get_model_psf,
    output:
        directory(f"{R}/{{sample}}/restored.ome.zarr"),
    log:
        f"{R}/{{sample}}/logs/infer_gather.log",
    benchmark:
        f"{R}/{{sample}}/benchmarks/infer_gather.tsv"
    wildcard_constraints:
        sample=SCATTERED_INFER,
    params:
        args=infer_step_args,
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres infer {input.normalized:q} {input.model:q} -o {output:q} --step gather --drop-stale-export "
        "{params.args} > {log:q} 2>&1"


rule qc:
    input:
        normalized=rules.normalise.output,
        restored=rules.infer.output,
        model=rules.train.output,
        fov=rules.crop.output,
        reference=get_reference,
        psf=get_model_psf,  # the held-out pair is re-made with the training PSF
    output:
        f"{R}/{{sample}}/qc/metrics.json",
    log:
        f"{R}/{{sample}}/logs/qc.log",
    benchmark:
        f"{R}/{{sample}}/benchmarks/qc.tsv"
    threads: min(2, MAX_THREADS)
    params:
        args=qc_args,
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres qc {input.normalized:q} {input.restored:q} {input.model:q} {input.fov:q} -o {output:q} "
        "--threads {threads} {params.args} > {log:q} 2>&1"
