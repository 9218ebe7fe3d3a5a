"""Shared by the Ray and object-storage tests: a local 2-CPU Ray instance bound to 127.0.0.1, a run with tiny
autoencoders, and the numbers compared between engines and sources."""

from __future__ import annotations

import os

# a locally started Ray advertises 127.0.0.1 only when this is set before Ray is first imported
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def loopback_cluster(ray, pytest):
    """Start Ray on 127.0.0.1 with 2 CPUs (skips when Ray would advertise another address); yields ``ray``."""
    from ray._private import ray_constants

    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0" or getattr(ray_constants, "ENABLE_RAY_CLUSTER", True):
        pytest.skip("Ray was configured to advertise a network address; these tests bind to loopback only")
    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        yield ray
    finally:
        ray.shutdown()


# the per-image numbers a scoring run writes with METRICS, compared between engines and sources
METRICS = ["mse", "dssim"]
NUMBERS = ["recon_mse", "recon_dssim", "recon_mse_before", "recon_dssim_before", "distinctiveness",
           "distinctiveness_features"]


def make_run(folder, input_size=32):
    """A run directory with tiny ``small`` autoencoders (after and before exposure)."""
    from memlens import models

    folder.mkdir(parents=True, exist_ok=True)
    for fname, seed in (("autoencoder.pt", 0), ("autoencoder_before.pt", 1)):
        model = models.create_autoencoder("small", input_size=input_size, width=4, latent_channels=4, seed=seed)
        models.save_autoencoder(folder / fname, model)
    return folder
