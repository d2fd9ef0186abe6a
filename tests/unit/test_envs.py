"""The conda environment (envs/*.yaml) agrees with pyproject.toml, and every rule uses it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[2]
ENV = REPO / "envs" / "selfres.yaml"

#: PyPI name -> conda-forge name, where they differ.
CONDA_NAME = {"torch": "pytorch", "matplotlib": "matplotlib-base"}
#: pyproject dependencies deliberately not in the job environment (they drive the jobs).
DRIVER_ONLY = {"snakemake", "snakemake-executor-plugin-slurm"}


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _conda_specs(path: Path) -> dict[str, SpecifierSet]:
    env = yaml.safe_load(path.read_text())
    out = {}
    for dep in env["dependencies"]:
        assert isinstance(dep, str), f"{path.name}: unexpected pip section {dep!r} (post-deploy script installs selfres)"
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", dep.split("#")[0].strip())
        assert m, f"{path.name}: cannot parse {dep!r}"
        name, spec = m[1].lower(), m[2].replace(" ", "")
        assert "=" not in spec.replace(">=", "").replace("<=", "").replace("==", "").replace("!=", ""), (
            f"{path.name}: {dep!r}: use pip-style specifiers (>=, <, ==), not conda's single '='")
        out[name] = SpecifierSet(spec)
    return out


def test_env_files_parse_and_use_conda_forge_only():
    files = sorted((REPO / "envs").glob("*.yaml"))
    assert ENV in files
    for f in files:
        env = yaml.safe_load(f.read_text())
        assert env["channels"][0] == "conda-forge", f"{f.name}: conda-forge must come first"
        assert "defaults" not in env["channels"], f"{f.name}: the anaconda 'defaults' channel needs a licence"
        _conda_specs(f)


def test_every_runtime_dependency_is_pinned_alike():
    specs = _conda_specs(ENV)
    deps = [Requirement(d) for d in _pyproject()["project"]["dependencies"]]
    for req in deps:
        name = req.name.lower()
        if name in DRIVER_ONLY:
            assert CONDA_NAME.get(name, name) not in specs, f"{name} is driver-only; keep it out of {ENV.name}"
            continue
        conda = CONDA_NAME.get(name, name)
        assert conda in specs, f"pyproject dependency {req} missing from {ENV.name} (as {conda})"
        assert specs[conda] == req.specifier, (
            f"{conda}: {ENV.name} asks {specs[conda] or 'any version'}, pyproject.toml {req.specifier or 'any'}")
    wanted = {CONDA_NAME.get(r.name.lower(), r.name.lower()) for r in deps} | {"python", "pip", "setuptools", "wheel"}
    extra = set(specs) - wanted
    assert not extra, f"{ENV.name} has packages pyproject.toml does not: {sorted(extra)}"


def test_python_and_build_requirements_agree():
    py = _pyproject()
    specs = _conda_specs(ENV)
    assert specs["python"] == SpecifierSet(py["project"]["requires-python"])
    for build_req in map(Requirement, py["build-system"]["requires"]):
        assert build_req.name in specs, f"build requirement {build_req} missing (post-deploy builds offline)"
        assert specs[build_req.name] == build_req.specifier


def test_post_deploy_script_installs_this_checkout(tmp_path):
    """Snakemake runs a copy of the script kept beside the environment
    (`.snakemake/conda/HASH.post-deploy.sh`): derived from its own location, the checkout was
    `.snakemake`, pip failed and no conda environment could ever be created. The Snakefile
    names the checkout in SELFRES_CHECKOUT."""
    import os
    import shutil
    import subprocess

    script = REPO / "envs" / "selfres.post-deploy.sh"
    assert script.read_text().startswith("#!"), "the shebang picks the interpreter Snakemake runs it with"
    copy = tmp_path / "work" / ".snakemake" / "conda" / "abc123.post-deploy.sh"
    copy.parent.mkdir(parents=True)
    shutil.copy(script, copy)
    fake = tmp_path / "bin"  # a python that records what pip was asked
    fake.mkdir()
    (fake / "python").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'asked'}\n")
    (fake / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SELFRES_CHECKOUT": str(REPO)}
    subprocess.run(["bash", str(copy)], cwd=tmp_path / "work", env=env, check=True)
    assert (tmp_path / "asked").read_text().split() == ["-m", "pip", "install", "--no-deps", "--no-build-isolation",
                                                        "-e", str(REPO)]
    env.pop("SELFRES_CHECKOUT")
    run = subprocess.run(["bash", str(copy)], cwd=tmp_path / "work", env=env, capture_output=True, text=True)
    assert run.returncode == 1 and "is not a selfres checkout" in run.stderr
    assert "SELFRES_CHECKOUT" in (REPO / "Snakefile").read_text()


@pytest.mark.parametrize("smk", sorted((REPO / "workflow" / "rules").glob("*.smk")), ids=lambda p: p.name)
def test_every_rule_declares_the_env(smk):
    text = smk.read_text()
    rules = re.findall(r"^rule (\w+):", text, flags=re.M)
    blocks = re.split(r"^rule \w+:", text, flags=re.M)[1:]
    for name, block in zip(rules, blocks):
        if "shell:" not in block and "run:" not in block and "script:" not in block:
            continue  # rules without a command (a target) need no environment
        m = re.search(r"^\s+conda:\s*\n\s+\"([^\"]+)\"", block, flags=re.M)
        assert m, f"{smk.name}: rule {name} has no conda: directive"
        assert (smk.parent / m[1]).resolve() == ENV, f"{smk.name}: rule {name} uses {m[1]}, not envs/selfres.yaml"


def test_imagecodecs_is_a_runtime_dependency():
    """tifffile reads LZW-, zstd- and JPEG-compressed TIFFs (common microscope exports) only with it."""
    deps = {Requirement(d).name.lower() for d in _pyproject()["project"]["dependencies"]}
    assert "imagecodecs" in deps
    assert "imagecodecs" in _conda_specs(ENV)
