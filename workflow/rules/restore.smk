# Per-sample chain: normalise → crop → train (GPU) → infer (GPU) → qc.


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
        args=normalise_args,
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres normalise {input:q} -o {output:q} {params.args} > {log:q} 2>&1"


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


rule train:
    input:
        normalized=rules.normalise.output,
        fov=rules.crop.output,
    output:
        directory(f"{R}/{{sample}}/model"),
    log:
        f"{R}/{{sample}}/logs/train.log",
    benchmark:
        f"{R}/{{sample}}/benchmarks/train.tsv"
    params:
        args=train_args,
    resources:
        gpu=1,
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres train {input.normalized:q} {input.fov:q} -o {output:q} --threads {threads} {params.args} > {log:q} 2>&1"


rule infer:
    input:
        normalized=rules.normalise.output,
        model=rules.train.output,
    output:
        directory(f"{R}/{{sample}}/restored.ome.zarr"),
    log:
        f"{R}/{{sample}}/logs/infer.log",
    benchmark:
        f"{R}/{{sample}}/benchmarks/infer.tsv"
    params:
        args=infer_args,
    resources:
        gpu=1,
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres infer {input.normalized:q} {input.model:q} -o {output:q} --threads {threads} {params.args} > {log:q} 2>&1"


rule qc:
    input:
        normalized=rules.normalise.output,
        restored=rules.infer.output,
        model=rules.train.output,
        fov=rules.crop.output,
        reference=get_reference,
    output:
        f"{R}/{{sample}}/qc/metrics.json",
    log:
        f"{R}/{{sample}}/logs/qc.log",
    benchmark:
        f"{R}/{{sample}}/benchmarks/qc.tsv"
    params:
        args=qc_args,
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres qc {input.normalized:q} {input.restored:q} {input.model:q} {input.fov:q} -o {output:q} "
        "--threads {threads} {params.args} > {log:q} 2>&1"
