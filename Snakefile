# selfres: self-supervised resolution restoration of 3-D fluorescence stacks.
# Table of contents only: configuration, includes, and the default target.
import os

from snakemake.utils import min_version

min_version("9.20")

# the checkout, for envs/selfres.post-deploy.sh: Snakemake runs a copy of it under
# .snakemake/conda/, which inherits this process's environment (--sdm conda)
os.environ.update(SELFRES_CHECKOUT=workflow.basedir)


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/restore.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
