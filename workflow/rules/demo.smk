# The built-in demo acquisitions (no download): beads (x4) and a neurite phantom (x2).


rule demo:
    output:
        DEMO_FILES,
    log:
        "demo_data/demo.log",
    conda:
        "../../envs/selfres.yaml"
    shell:
        "selfres demo demo_data > {log} 2>&1"
