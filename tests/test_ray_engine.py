"""The Ray engine on a local 2-CPU Ray cluster bound to 127.0.0.1 reproduces the single-process run files."""

from __future__ import annotations

import json
import os

# a locally started Ray advertises 127.0.0.1 only when this is set before Ray is first imported
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'memlens[ray]')")
pytest.importorskip("ray.data", reason="ray[data] is not installed")
pytest.importorskip("pyarrow", reason="pyarrow is not installed")

from _ray_helpers import loopback_cluster, make_run  # noqa: E402
from memlens.cli import main  # noqa: E402
from memlens.data import make_demo_set  # noqa: E402
from memlens.errors import ConfigError, DataError  # noqa: E402
from memlens.scoring import score_run  # noqa: E402
from memlens.scoring import score_run as local_score_run  # noqa: E402

N = 40
FEATURE_SIZE = 64


@pytest.fixture(scope="module")
def cluster():
    yield from loopback_cluster(ray, pytest)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "demo"
    return make_demo_set(root, n_images=N, image_size=32, n_experience=0, n_observers=10, n_splits=3)


_make_run = make_run


@pytest.fixture(scope="module")
def reference(demo, tmp_path_factory):
    """The single-process run (default metrics) that every Ray run must reproduce."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = _make_run(tmp_path_factory.mktemp("runs") / "local")
        local_score_run(run, demo, feature_size=FEATURE_SIZE, device="cpu")
    finally:
        torch.set_num_threads(n)
    return run


def _assert_same_run(run, ref):
    a = pd.read_csv(ref / "per_image.csv")
    b = pd.read_csv(run / "per_image.csv")
    assert b.columns.tolist() == a.columns.tolist()
    assert b["image_id"].tolist() == a["image_id"].tolist()  # dataset order
    numeric = [c for c in a.columns if pd.api.types.is_float_dtype(a[c])]
    assert any(c.startswith("recon_") for c in numeric) and "distinctiveness_features" in numeric
    for c in numeric:
        np.testing.assert_allclose(b[c], a[c], rtol=1e-4, atol=1e-6, err_msg=c)
    for c in a.columns:
        if c not in numeric:
            assert b[c].astype(str).tolist() == a[c].astype(str).tolist(), c
    np.testing.assert_allclose(np.load(run / "latents.npy"), np.load(ref / "latents.npy"), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.load(run / "features.npy"), np.load(ref / "features.npy"), rtol=1e-4, atol=1e-5)
    assert (run / "latent_ids.txt").read_text() == (ref / "latent_ids.txt").read_text()
    assert (run / "split_halves.npz").read_bytes() == (ref / "split_halves.npz").read_bytes()
    ca = json.loads((ref / "config.json").read_text())["score"]
    cb = json.loads((run / "config.json").read_text())["score"]
    assert ca.pop("engine") == "local" and cb.pop("engine") == "ray"
    assert {k: v for k, v in cb.items() if k in ca} == ca  # the same settings, plus the Ray ones
    assert set(cb) - set(ca) <= {"shard_size", "workers", "address", "gpus_per_worker", "merge"}


def test_cli_ray_engine_matches_single_process(cluster, demo, reference, tmp_path, capsys):
    run = _make_run(tmp_path / "ray")
    rc = main(["-q", "score", str(demo), "--run", str(run), "--engine", "ray", "--workers", "2",
               "--feature-size", str(FEATURE_SIZE)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert f"scored {N} images" in out.out
    _assert_same_run(run, reference)
    assert not [d for d in ("per_image", "latents", "features") if (run / d).exists()]  # parts removed after the merge
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary files left


def _parts(run):
    """``{file name: mtime}`` of every part file of a run (per-image Parquet, latents, features)."""
    return {f"{d}/{p.name}": p.stat().st_mtime_ns for d in ("per_image", "latents", "features")
            for p in (run / d).glob("part-*")}


def test_dead_worker_is_retried_and_rerun_skips_complete_shards(cluster, demo, reference, tmp_path):
    run = _make_run(tmp_path / "ray")
    exit_marker, raise_marker = tmp_path / "exited", tmp_path / "raised"
    table = score_run(run, demo, engine="ray", workers=2, shard_size=8, keep_shards=True,
                      feature_size=FEATURE_SIZE,
                      _inject=[{"unit": 1, "kind": "exit", "marker": str(exit_marker)},
                               {"unit": 3, "kind": "raise", "marker": str(raise_marker)}])
    assert exit_marker.exists() and raise_marker.exists()  # a model actor died, a batch raised: both retried
    info = table.attrs["info"]
    assert (info["shards"], info["shards_run"], info["shards_skipped"], info["workers"]) == (5, 5, 0, 2)
    assert info["worker_pids"]  # (which actors did the work depends on timing: the pool is balanced by Ray)
    _assert_same_run(run, reference)

    # the kept parts tile the 40 rows; drop unit 3's (rows 24-31) as if the run had stopped while writing it
    rows = sorted((int(p.stem.split("-")[1]), int(p.stem.split("-")[2])) for p in (run / "per_image").glob("*.parquet"))
    assert rows[0][0] == 0 and rows[-1][1] == N and all(a[1] == b[0] for a, b in zip(rows, rows[1:], strict=False))
    for p in (run / "per_image").glob("part-*.parquet"):
        if 24 <= int(p.stem.split("-")[1]) < 32:
            p.unlink()
    kept = {k: v for k, v in _parts(run).items() if not 24 <= int(k.split("-")[1]) < 32}

    # a permanent failure on the missing unit: a clear error, the complete units stay
    with pytest.raises(DataError, match=r"4 of 5 units complete.*run again.*injected permanent failure"):
        score_run(run, demo, engine="ray", workers=2, shard_size=8, keep_shards=True, feature_size=FEATURE_SIZE,
                  _inject=[{"unit": 3, "kind": "fail"}])
    # the rerun scores unit 3 only (any other unit would fail permanently)
    table = score_run(run, demo, engine="ray", workers=2, shard_size=8, keep_shards=True, feature_size=FEATURE_SIZE,
                      _inject=[{"unit": k, "kind": "fail"} for k in (0, 1, 2, 4)])
    info = table.attrs["info"]
    assert (info["shards_run"], info["shards_skipped"], info["workers"]) == (1, 4, 1)
    assert {k: v for k, v in _parts(run).items() if k in kept} == kept
    _assert_same_run(run, reference)

    # other settings (here the metrics) invalidate the parts instead of mixing them
    table = score_run(run, demo, engine="ray", workers=2, shard_size=8, metrics=["mse"], feature_size=FEATURE_SIZE)
    assert table.attrs["info"]["shards_skipped"] == 0
    assert [c for c in table.columns if c.startswith("recon_")] == ["recon_mse", "recon_mse_before"]
    np.testing.assert_allclose(table["recon_mse"], pd.read_csv(reference / "per_image.csv")["recon_mse"], rtol=1e-4)


def test_int8_shards_share_one_calibration(cluster, demo, tmp_path):
    """precision int8 through Ray: every shard calibrates on the collection's images, as the local run does."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = local_score_run(_make_run(tmp_path / "local"), demo, metrics=["mse"], feature_size=FEATURE_SIZE,
                                device="cpu", precision="int8")
    finally:
        torch.set_num_threads(n)
    table = score_run(_make_run(tmp_path / "ray"), demo, engine="ray", workers=2, shard_size=8, metrics=["mse"],
                      feature_size=FEATURE_SIZE, precision="int8")
    assert table.attrs["info"]["shards"] == 5
    for col in ("recon_mse", "recon_mse_before", "distinctiveness"):
        np.testing.assert_allclose(table[col], local[col], rtol=1e-5, atol=1e-8, err_msg=col)
    np.testing.assert_allclose(np.load(tmp_path / "ray" / "latents.npy"), np.load(tmp_path / "local" / "latents.npy"),
                               rtol=1e-5, atol=1e-6)
    ca = json.loads((tmp_path / "local" / "config.json").read_text())["score"]
    cb = json.loads((tmp_path / "ray" / "config.json").read_text())["score"]
    assert ca["precision"] == cb["precision"] == "int8" and ca["int8"] == cb["int8"]


def test_missing_extra_and_bad_settings_are_clear(demo, tmp_path, monkeypatch, capsys):
    import sys

    run = _make_run(tmp_path / "run")
    assert main(["score", str(demo), "--run", str(run), "--engine", "spark"]) == 2
    assert "engine" in capsys.readouterr().err
    with pytest.raises(Exception, match="workers must be at least 1"):
        score_run(run, demo, engine="ray", workers=0)
    # int8 settings the actors could not run fail on the driver, before Ray starts
    with pytest.raises(ConfigError, match="layer= is not available with precision int8"):
        score_run(run, demo, engine="ray", precision="int8", layer="encoder.0")
    with pytest.raises(ConfigError, match="CPU only"):
        score_run(run, demo, engine="ray", precision="int8", device="cuda")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    assert main(["score", str(demo), "--run", str(run), "--engine", "ray"]) == 1
    assert "memlens[ray]" in capsys.readouterr().err
    assert not (run / "per_image.csv").exists()


def test_predict_through_ray_equals_local(cluster, demo, tmp_path):
    from memlens._io import file_sha256
    from memlens.inference import predict_images
    from memlens.inference_ray import predict_images_ray
    from memlens.predict import MemorabilityRegressor, save_predictor

    run = _make_run(tmp_path / "run")
    rng = np.random.default_rng(0)
    head = MemorabilityRegressor(hidden=(8,), max_epochs=3, random_state=0).fit(rng.normal(size=(30, 4)),
                                                                                 rng.normal(size=30))
    save_predictor(run / "predictor.pt", head, [{"kind": "autoencoder", "checkpoint": "autoencoder.pt",
                                                 "sha256": file_sha256(run / "autoencoder.pt"), "pool": "avg",
                                                 "layer": None, "size": 32, "dim": 4}])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    sources = [str(demo / "city"), str(bad), str(tmp_path / "missing.png"), str(demo / "night")]
    want = predict_images(sources, run, batch_size=4, device="cpu")
    got = predict_images_ray(sources, run, workers=2, shard_size=5, batch_size=3, device="cpu")
    assert len(want.table) >= 10
    assert got.table["image"].tolist() == want.table["image"].tolist()  # the input order
    np.testing.assert_allclose(got.table["predicted_score"], want.table["predicted_score"], rtol=1e-5, atol=1e-6)
    assert [str(p) for p in got.problems] == [str(p) for p in want.problems]
    assert any("broken.jpg" in str(p) for p in got.problems)
    # and through the command line
    import pandas as pd

    from memlens.cli import main

    out = tmp_path / "pred.csv"
    assert main(["predict", *sources, "--run", str(run), "--engine", "ray", "--workers", "2", "--device", "cpu",
                 "-o", str(out)]) == 0
    cli = pd.read_csv(out)
    assert cli["image"].tolist() == want.table["image"].tolist()
    np.testing.assert_allclose(cli["predicted_score"], want.table["predicted_score"], rtol=1e-5, atol=1e-5)
