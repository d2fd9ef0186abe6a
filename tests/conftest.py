"""Shared fixtures: small seeded synthetic volumes (the tests make their own data)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage


def blob_volume(shape=(16, 48, 48), *, n=60, sigma=(1.5, 1.0, 1.0), seed=0) -> np.ndarray:
    """Random points blurred by an anisotropic Gaussian, plus a faint background."""
    rng = np.random.default_rng(seed)
    v = np.zeros(shape, np.float32)
    idx = rng.integers(0, shape, size=(n, 3))
    v[tuple(idx.T)] = 1.0
    v = ndimage.gaussian_filter(v, sigma)
    return (v / v.max() + 0.02).astype(np.float32)


def weights_at_each_validation(monkeypatch) -> dict:
    """``{step: state_dict}``: the weights each validation of a training scored, recorded by a spy
    on ``selfres.train.Selection.observe`` (which then runs as it is)."""
    import copy

    from selfres import train

    seen: dict = {}
    observe = train.Selection.observe

    def spy(self, model, *, step, **kw):
        seen[int(step)] = copy.deepcopy(model.state_dict())
        return observe(self, model, step=step, **kw)

    monkeypatch.setattr(train.Selection, "observe", spy)
    return seen


def captured_figures(monkeypatch) -> list:
    """The matplotlib figures the report code draws from now on (their PNG made as usual)."""
    from selfres import figures

    drawn = []
    real = figures._fig_to_png

    def keep(fig):
        drawn.append(fig)
        return real(fig)

    monkeypatch.setattr(figures, "_fig_to_png", keep)
    return drawn


def forget_training_acquisition(model_dir) -> None:
    """Drop the acquisition a model's ``model.json`` records (as a model written before the record
    was kept), so that a test may restore another volume with it; ``infer`` refuses that otherwise."""
    import json
    from pathlib import Path

    path = Path(model_dir) / "model.json"
    info = json.loads(path.read_text())
    assert info["metadata"].pop("acquisition", None) is not None, "the model recorded no acquisition"
    path.write_text(json.dumps(info))


@pytest.fixture
def blobs():
    return blob_volume()


@pytest.fixture(autouse=True)
def _few_threads():
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def _float32_on_cpu(request, monkeypatch):
    """Unit and property tests assert exactness (tiled = single pass, fused = trained) in
    float32; the CPU bf16 inference path is tested on its own (``cpu_bf16`` marker).
    Integration and end-to-end tests run the package's defaults."""
    from selfres.models import cpu_has_native_bf16

    path = str(request.node.path)
    if request.node.get_closest_marker("cpu_bf16"):
        monkeypatch.setenv("SELFRES_CPU_BF16", "1")
    elif "/tests/unit/" in path or "/tests/property/" in path:
        monkeypatch.setenv("SELFRES_CPU_BF16", "0")
    cpu_has_native_bf16.cache_clear()
    yield
    cpu_has_native_bf16.cache_clear()


def pytest_collection_modifyitems(config, items):
    """The Slurm tests first: they are the longest file (a dozen jobs through a real
    scheduler) and mostly wait on it, so with parallel workers (pytest-xdist, one file per
    worker, files sent in this order: ``--no-loadscope-reorder`` in pyproject.toml) they
    overlap the rest instead of running alone at the end. The workflow runs (e2e,
    integration) come next, the many short unit files last, to fill the gaps."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is None)
