"""Ray plumbing shared by the Ray engines (scoring: :mod:`memlens.scoring.ray_engine`; prediction:
:mod:`memlens.inference_ray`): importing Ray, a session bound to the loopback interface, the Ray Data settings
of a run, the size of the actor pool, and the memlens error hidden inside a Ray exception."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator
from typing import Any

from .errors import ConfigError, MemlensError

__all__ = ["require_ray", "ray_session", "ray_data_context", "actor_pool_size", "memlens_cause", "shard_plan",
           "LOOPBACK_ENV", "DATA_CONTEXT"]

log = logging.getLogger(__name__)

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Ray Data settings during a run: no progress bars (the CLI shows its own), retry OSErrors raised in an
#: actor, raise the actor's own exception (so a DataError naming a file arrives)
DATA_CONTEXT = {"enable_progress_bars": False, "print_on_execution_start": False,
                "actor_task_retry_on_errors": [OSError], "raise_original_map_exception": True}


def require_ray(local: bool = True) -> Any:
    """Import Ray (and Ray Data) or raise a :class:`ConfigError` naming the ``ray`` extra.

    ``local=True`` (no cluster address): before Ray's first import, make a locally started Ray bind to
    127.0.0.1 only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), unless the variable is already set.
    """
    import sys

    if local and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError("--engine ray needs the ray extra: pip install 'memlens[ray]' (ray[data], pyarrow)") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None
                ) -> Iterator[Any]:
    """Use the Ray instance already initialised in this process, connect to ``address``, or start a local one.

    A local instance is bound to 127.0.0.1 (no dashboard) and shut down on exit; a connection to a cluster
    is closed on exit; an instance initialised by the caller is left alone.
    """
    ray = require_ray(local=address is None)
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.WARNING, "configure_logging": False}
    if address is None:
        kwargs.update(num_cpus=num_cpus or os.cpu_count() or 1)
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
        if os.environ.get(LOOPBACK_ENV) != "0":
            log.warning("starting a local Ray instance with %s=%s: it may advertise a non-loopback address",
                        LOOPBACK_ENV, os.environ.get(LOOPBACK_ENV))
    else:
        kwargs["address"] = address
    t0 = time.perf_counter()
    try:
        ray.init(**kwargs)
    except Exception as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ConfigError(f"could not start or reach {where}: {exc}") from None
    log.info("Ray %s in %.1f s: %s", "connected" if address else "started", time.perf_counter() - t0,
             ray.cluster_resources())
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def ray_data_context() -> Iterator[Any]:
    """Ray Data's current context with :data:`DATA_CONTEXT` applied; the previous values are restored on exit."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = {key: getattr(ctx, key) for key in DATA_CONTEXT}
    try:
        for key, value in DATA_CONTEXT.items():
            setattr(ctx, key, value)
        yield ctx
    finally:
        for key, value in saved.items():
            setattr(ctx, key, value)


def actor_pool_size(resources: dict[str, Any], *, workers: int | None, gpus_per_worker: float | None,
                    cpus_per_worker: float, device: str, n_tasks: int) -> tuple[int, float]:
    """``(actors, gpus per actor)`` for a pool on a cluster with ``resources``.

    GPUs per actor: ``gpus_per_worker``, else 1 when the cluster has a GPU and ``device`` is not ``"cpu"``,
    else 0. Actors: ``workers``, else one per GPU share (GPU actors) or per ``cpus_per_worker`` CPUs; never
    more than ``n_tasks`` nor fewer than 1.
    """
    n_gpu = float(resources.get("GPU", 0))
    gpw = float(gpus_per_worker) if gpus_per_worker is not None else (1.0 if n_gpu >= 1 and device != "cpu"
                                                                       else 0.0)
    if gpw > 0 and n_gpu <= 0:
        raise ConfigError(f"gpus_per_worker={gpw:g} but the Ray cluster has no GPUs")
    if workers is None:
        workers = max(1, int(n_gpu // gpw)) if gpw > 0 else max(1, int(float(resources.get("CPU", 1))
                                                                   // max(cpus_per_worker, 1e-9)))
    return max(1, min(int(workers), n_tasks)), gpw


def shard_plan(n: int, shard_size: int) -> list[tuple[int, int]]:
    """Contiguous ``(start, stop)`` row ranges of at most ``shard_size`` rows covering ``range(n)``."""
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    return [(a, min(a + shard_size, n)) for a in range(0, n, shard_size)]


_REMOTE_ERROR = re.compile(r"^memlens\.[\w.]*?(?:Error|ImageReadError): (.+)$")


def memlens_cause(exc: BaseException) -> str | None:
    """The message of the MemlensError behind a Ray exception (its chain, or the remote traceback text)."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, MemlensError):
            text = str(e).strip().splitlines()
            found = [m.group(1) for line in text if (m := _REMOTE_ERROR.match(line.strip()))]
            return found[-1] if found else (text[-1] if text else type(e).__name__)
        stack.extend([getattr(e, "cause", None), e.__cause__, e.__context__])
    found = [m.group(1) for line in str(exc).splitlines() if (m := _REMOTE_ERROR.match(line.strip()))]
    return found[-1] if found else None
