"""Test-suite settings shared by every test module."""

from __future__ import annotations

import os

import pytest

# Tests use tiny tensors: one intra-op thread is much faster than two on a shared 2-core machine
# (and pytest-xdist already runs two workers).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Any Ray cluster a test starts binds to loopback only.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_configure(config):
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests without CUDA, with a reason that says so."""
    import pytest

    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run on a GPU machine: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _cpu_unless_marked_gpu(request, monkeypatch):
    """Tests not marked `gpu` run on the CPU, also on a machine with a GPU: their `device="auto"` settings,
    expected numbers and tolerances are the CPU's. Child processes (the CLI run as a subprocess, Ray workers)
    see no GPU either. The `gpu` tests see the real device."""
    if "gpu" in request.keywords:
        return
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
