# The built-in demo acquisitions (no download): beads (x4) and a neurite phantom (x2).


rule demo:
    output:
        "demo_data/beads.tif",
        "demo_data/beads_reference.tif",
        "demo_data/neurites.tif",
        "demo_data/neurites_reference.tif",
    log:
        "demo_data/demo.log",
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres demo demo_data > {log} 2>&1"
