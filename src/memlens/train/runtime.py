"""Where and how torch runs during a training: the device, CPU threads, deterministic algorithms, autocast.

Each setting a call changes (threads, deterministic algorithms) is a context manager that restores the
previous value on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..errors import ConfigError

__all__ = ["resolve_device", "auto_threads", "busy_machine_note", "num_threads", "deterministic_algorithms",
           "model_autocast"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU raises ``ConfigError``."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available (use --device cpu or auto)")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    return dev


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block (restored after); ``n`` None or 0: unchanged."""
    if not n:
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def auto_threads() -> int:
    """The CPU threads ``threads="auto"`` means: torch's intra-op thread count, at least 1.

    torch's default is the usable cores (or ``OMP_NUM_THREADS`` when set). The choice is fixed for a machine
    and never follows its momentary load: training results depend (slightly) on the thread count, because
    float sums are split differently, and a rerun must give the same numbers. ``manifest.json`` records
    the count (``device.torch_threads``). On a busy machine :func:`train_run` warns that ``--threads 1`` is
    faster (oversubscribed intra-op threads are very slow: 2 threads on 2 busy cores ran batch-1 exposure
    20x slower than 1 thread).
    """
    return max(1, int(torch.get_num_threads()))


def busy_machine_note(threads: int) -> str | None:
    """A warning when ``threads`` > 1 and other processes already keep the cores busy, else None."""
    import os

    if threads <= 1:
        return None
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # pragma: no cover - platforms without load averages
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load < 0.75 * cores:
        return None
    return (f"the machine is busy (1-minute load {load:.1f} on {cores} cores) and training uses {threads} threads: "
            "shared cores make this slow; --threads 1 is usually faster then (the numbers depend slightly on the "
            "thread count, which manifest.json records)")


@contextlib.contextmanager
def deterministic_algorithms(on: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` for the block when ``on`` (the previous setting restored)."""
    if not on:
        yield
        return
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def model_autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``amp``, else a no-op context."""
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()
