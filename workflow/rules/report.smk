# Per-sample report and provenance; the batch summary.


rule report:
    input:
        normalized=rules.normalise.output,
        restored=rules.infer.output,
        model=rules.train.output,
        fov=rules.crop.output,
        metrics=rules.qc.output,
    output:
        html=report(
            f"{R}/{{sample}}/report.html",
            caption="../report/sample_report.rst",
            category="Samples",
            labels={"sample": "{sample}", "figure": "quality report"},
        ),
        provenance=f"{R}/{{sample}}/provenance.json",
        orthoviews=report(
            f"{R}/{{sample}}/figures/orthoviews.png",
            caption="../report/orthoviews.rst",
            category="Samples",
            labels={"sample": "{sample}", "figure": "orthogonal views"},
        ),
        projections=report(
            f"{R}/{{sample}}/figures/projections.png",
            caption="../report/projections.rst",
            category="Samples",
            labels={"sample": "{sample}", "figure": "projections"},
        ),
        detail=report(
            f"{R}/{{sample}}/figures/detail.png",
            caption="../report/detail.rst",
            category="Samples",
            labels={"sample": "{sample}", "figure": "detail and line profile"},
        ),
        training_curves=report(
            f"{R}/{{sample}}/figures/training_curves.png",
            caption="../report/training_curves.rst",
            category="Samples",
            labels={"sample": "{sample}", "figure": "training curves"},
        ),
    log:
        f"{R}/{{sample}}/logs/report.log",
    benchmark:
        f"{R}/{{sample}}/benchmarks/report.tsv"
    params:
        args=report_args,
        benchmarks=f"{R}/{{sample}}/benchmarks",
        figures=f"{R}/{{sample}}/figures",
    resources:
        workflow_dir=workflow.basedir,  # for provenance; not params: another path to the checkout reruns nothing
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres report {input.normalized:q} {input.restored:q} {input.model:q} {input.fov:q} {input.metrics:q} "
        "-o {output.html:q} --provenance {output.provenance:q} --benchmarks {params.benchmarks:q} "
        "--figures {params.figures:q} --workflow-dir {resources.workflow_dir:q} {params.args} > {log:q} 2>&1"


# export_tiff: true: restored.ome.zarr also as an OME-TIFF, for Fiji and other TIFF readers.
rule export_tiff:
    input:
        f"{R}/{{sample}}/restored.ome.zarr",
    output:
        f"{R}/{{sample}}/restored.ome.tif",
    log:
        f"{R}/{{sample}}/logs/export_tiff.log",
    benchmark:
        f"{R}/{{sample}}/benchmarks/export_tiff.tsv"
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres export {input:q} -o {output:q} --sample {wildcards.sample:q} > {log:q} 2>&1"


# export_tiff: true, and channel: all or timepoint: all: the channels and time points of one
# acquisition as one OME-TIFF (a composite or hyperstack in Fiji).
rule export_acquisition:
    input:
        lambda wildcards: expand(f"{R}/{{sample}}/restored.ome.zarr", sample=ACQUISITION_GROUPS[wildcards.acquisition][0]),
    output:
        f"{R}/{{acquisition}}.ome.tif",
    log:
        f"{R}/logs/export_acquisition/{{acquisition}}.log",
    params:
        timepoints=lambda wildcards: ACQUISITION_GROUPS[wildcards.acquisition][1],
    wildcard_constraints:
        acquisition="|".join(re.escape(a) for a in ACQUISITION_GROUPS) or "NO_ACQUISITION_GROUPS",
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres export {input:q} -o {output:q} --sample {wildcards.acquisition:q} --timepoints {params.timepoints} "
        "> {log:q} 2>&1"


# Runs in the Snakemake process itself (light: reads JSON and TSV files), never as a cluster job:
# a job re-reads the sheet and the inbox, and an inbox acquisition that was still being written
# when the run started but has settled since would become one more sample there, whose report
# the job would wait for and fail on (every retry alike), leaving the night without a summary
rule summary:
    input:
        expand(f"{R}/{{sample}}/report.html", sample=TARGET_SAMPLES),
        summary_rebuild_marker,
    localrule: True
    output:
        tsv=report(f"{R}/summary.tsv", caption="../report/summary.rst", category="Summary",
                   labels={"figure": "summary table"}),
        html=f"{R}/summary.html",
    log:
        f"{R}/logs/summary.log",
    params:
        args=summary_args,
        results=results_dir_of,
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres summary {params.results:q} {params.args} -o {output.tsv:q} --html {output.html:q} > {log:q} 2>&1"
