"""FAISS at scale, on tiny data: sharded indexes, saved indexes, the index flags, GPU detection, and the
distinctiveness of new images against a run's saved index."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.distance import cdist

faiss = pytest.importorskip("faiss", reason="the faiss extra is not installed (pip install 'memlens[faiss]')")

from memlens import index as mx  # noqa: E402
from memlens.errors import ConfigError, DataError  # noqa: E402


@pytest.fixture(scope="module")
def x():
    """600 x 24 clustered float32 rows, no two at the same distance from a third (no ties to break)."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(12, 24)) * 4
    return (centres[rng.integers(0, 12, 600)] + rng.normal(size=(600, 24))).astype(np.float32)


def _truth(x, k, queries=None):
    q = x if queries is None else queries
    d = cdist(q.astype(np.float64), x.astype(np.float64))
    if queries is None:
        np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1)[:, :k]
    return np.take_along_axis(d, order, axis=1), order


def test_sharded_flat_equals_unsharded_flat(x):
    k = 3
    d1, i1, rep1 = mx.nearest_index(x, k, index="flat", recall_sample=0)
    for shards in (3, [101, 450], None):
        src = mx.ShardedLatents([x[:200], x[200:380], x[380:]]) if shards is None else x
        d2, i2, rep2 = mx.nearest_index(src, k, index="flat", shards=shards if shards is not None else [200, 380],
                                     recall_sample=0)
        np.testing.assert_array_equal(i2, i1)
        np.testing.assert_array_equal(d2, d1)
        assert rep2.shards == 3
    want_d, want_i = _truth(x, k)
    np.testing.assert_array_equal(i1, want_i)
    np.testing.assert_allclose(d1, want_d, rtol=1e-12)
    # new vectors (no self to exclude), and a reference subset: still the same answer sharded or not
    new = x[:20] + np.float32(0.01)
    ref = np.arange(600)[np.arange(600) % 3 != 0]
    one = mx.ApproxIndex(x, "flat", reference=ref)
    many = mx.ShardedIndex(x, "flat", shards=4, reference=ref)
    for a, b in ((one.search_vectors(new, k), many.search_vectors(new, k)),
                 (one.search(np.arange(50), k), many.search(np.arange(50), k))):
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
    assert np.isin(many.search(np.arange(50), k)[1], ref).all()


def test_sharded_ivf_reports_its_recall(x):
    k = 2
    dist, idx, report = mx.nearest_index(x, k, index="ivf", shards=3, nlist=8, nprobe=1, recall_sample=600, seed=1)
    want, _ = _truth(x, k)
    assert report.shards == 3 and report.params["shards"] == 3 and report.params["nprobe"] == 1
    assert report.recall == pytest.approx(mx.recall_at_k(dist, want), abs=1e-12)
    assert 0.3 < report.recall < 1.0  # one list of eight per shard misses some
    assert (dist >= want - 1e-9).all()  # re-ranked: true distances, never under the exact ones
    assert report.query_seconds_per_image == pytest.approx(report.search_seconds / 600)
    _, _, strong = mx.nearest_index(x, k, index="ivf", shards=3, nlist=8, nprobe=8, recall_sample=600)
    assert strong.recall == 1.0


@pytest.mark.parametrize("sharded", [False, True])
def test_saved_index_reloads_and_answers_identically(x, tmp_path, sharded):
    big = np.concatenate([x, x[::-1] + np.float32(0.5), x + np.float32(0.25)])  # 1,800 rows: enough for 8-bit PQ
    ref = np.arange(len(big))[np.arange(len(big)) % 5 != 0]
    kw = {"kind": "ivf", "reference": ref, "nlist": 16, "nprobe": 4, "pq_bytes": 8, "seed": 0}
    built = mx.ShardedIndex(big, shards=2, **kw) if sharded else mx.ApproxIndex(big, **kw)
    assert built.encoding_name == "pq8"
    built.save(tmp_path / "ix")
    meta = json.loads((tmp_path / "ix" / "meta.json").read_text())
    assert meta["kind"] == "ivf" and meta["params"]["nprobe"] == 4 and meta["n_rows"] == len(big)
    loaded = mx.load_index(tmp_path / "ix", big)
    assert type(loaded) is type(built) and loaded.params["nprobe"] == 4
    for a, b in ((built.search(np.arange(0, 1800, 7), 3), loaded.search(np.arange(0, 1800, 7), 3)),
                 (built.search_vectors(big[:30] * 1.01, 2), loaded.search_vectors(big[:30] * 1.01, 2))):
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
    changed = big.copy()
    changed[0] += 1
    with pytest.raises(DataError, match="latents changed"):
        mx.load_index(tmp_path / "ix", changed)
    with pytest.raises(DataError, match="built on 1800 x 24"):
        mx.load_index(tmp_path / "ix", big[:-1])
    with pytest.raises(DataError, match="meta.json missing"):
        mx.load_index(tmp_path / "nothing", big)


def test_pq_bytes_nprobe_and_nlist_defaults():
    assert mx.pq_bytes_for(512, 64) == 64 and mx.pq_bytes_for(1280, 48) == 40 and mx.pq_bytes_for(24, 7) == 6
    assert mx.choose_encoding("ivf", 10**6, 512, 10**6, pq_bytes=32) == ("pq", 32)
    with pytest.raises(ConfigError, match="pq_bytes goes with encoding 'pq'"):
        mx.choose_encoding("ivf", 1000, 512, 100, "sq8", pq_bytes=8)
    with pytest.raises(ConfigError, match="memory budget"):
        mx.choose_encoding("ivf", 10**8, 512, 100, pq_bytes=64)
    assert mx.default_nlist(10**6) == 1000 and mx.default_nlist(10**7) == 3162 and mx.default_nlist(100) == 2
    assert mx.default_nprobe(3162) == 32 and mx.default_nprobe(5) == 5
    with pytest.raises(ConfigError, match="pq_bytes is for ivf and hnsw"):
        mx.ApproxIndex(np.zeros((10, 4), np.float32), "flat", pq_bytes=2)


def test_gpu_is_used_when_faiss_sees_one(x, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: "resources", raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda res, dev, ix: calls.append(("to", res, dev)) or ix,
                        raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", lambda ix: calls.append(("back",)) or ix, raising=False)
    dist, _, report = mx.nearest_index(x, 1, index="ivf", nlist=4, nprobe=4, recall_sample=100,
                                    save_dir=tmp_path / "g")
    assert report.gpu and calls[0] == ("to", "resources", 0) and ("back",) in calls  # saved from the CPU copy
    assert report.recall == 1.0
    ix = mx.ApproxIndex(x, "hnsw", hnsw_m=8)  # FAISS has no GPU HNSW: stays on the CPU
    assert not ix.gpu
    assert not mx.ApproxIndex(x, "ivf", nlist=4, gpu=False).gpu
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0, raising=False)
    assert not mx.ApproxIndex(x, "ivf", nlist=4).gpu
    with pytest.raises(ConfigError, match="sees no GPU"):
        mx.ApproxIndex(x, "ivf", nlist=4, gpu=True)


def _run(tmp_path, n=15):
    from memlens import models
    from memlens.data import make_demo_set

    demo = make_demo_set(tmp_path / "demo", n_images=n, image_size=32, n_experience=0, n_observers=10, n_splits=3)
    run = tmp_path / "run"
    run.mkdir()
    models.save_autoencoder(run / "autoencoder.pt", models.create_autoencoder(
        "small", input_size=32, width=4, latent_channels=4, seed=0))
    return demo, run


def test_score_saves_the_index_and_new_images_use_it(tmp_path, capsys):
    from memlens.cli import main
    from memlens.index_store import distinctiveness_of_images, saved_index_dir

    demo, run = _run(tmp_path)
    args = ["-q", "score", str(demo), "--run", str(run), "--metrics", "mse", "--feature-size", "32", "--device",
            "cpu"]
    assert main([*args, "--index", "ivf", "--nlist", "2", "--nprobe", "2"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "ms per query" in out and "saved in" in out
    report = json.loads((run / "index.json").read_text())["distinctiveness"]
    assert report["params"]["nlist"] == 2 and report["params"]["nprobe"] == 2 and report["recall"] == 1.0
    assert report["saved_to"] == "index/distinctiveness" and report["query_seconds_per_image"] > 0
    assert report["n"] == 15 and report["memlens_version"]
    assert (saved_index_dir(run) / "meta.json").is_file()
    assert (saved_index_dir(run, "distinctiveness_features") / "index.faiss").is_file()

    ids = (run / "latent_ids.txt").read_text().split()[:4]
    paths = [demo / i for i in ids]
    values, info = distinctiveness_of_images(run, paths, device="cpu")
    assert info["search"] == "saved ivf index" and info["params"]["nprobe"] == 2
    np.testing.assert_allclose(values, 0.0, atol=1e-4)  # each image finds its own latent from scoring
    lat = np.load(run / "latents.npy")
    exact, info = distinctiveness_of_images(run, paths, device="cpu", use_saved=False)
    assert info["search"] == "exact"
    np.testing.assert_allclose(exact, values, atol=1e-6)
    # scored again without an index: the stale index is gone, new images are searched exactly
    assert main([*args, "--index", "exact"]) == 0
    assert not saved_index_dir(run).exists()
    again, info = distinctiveness_of_images(run, paths[:1], device="cpu")
    assert info["search"] == "exact" and again[0] == pytest.approx(values[0], abs=1e-6)
    # the numpy fallback (no FAISS) gives the same distances as FAISS's exact search
    from memlens.index_store import _exact, _exact_numpy

    q = lat[:5] + np.float32(0.001)
    np.testing.assert_allclose(_exact_numpy(mx.ShardedLatents([lat]), q, 3, "euclidean", None),
                               _exact(mx.ShardedLatents([lat]), q, 3, "euclidean", None), rtol=1e-12)


@pytest.mark.parametrize(("flags", "message"), [
    (["--index", "ivf", "--nlist", "4", "--nprobe", "8"], "--nprobe 8 exceeds --nlist 4"),
    (["--index", "hnsw", "--nlist", "4"], "--nlist applies to --index ivf, not --index hnsw"),
    (["--index", "exact", "--pq-bytes", "8"], "--pq-bytes applies to --index ivf or hnsw, not --index exact"),
    (["--index", "ivf", "--ef-search", "8"], "--ef-search applies to --index hnsw"),
    (["--index", "ivf", "--pq-bytes", "0"], "Invalid value for '--pq-bytes'"),
    (["--index", "ivf", "--nprobe", "x"], "Invalid value for '--nprobe'"),
])
def test_bad_index_flags_are_one_line_usage_errors(tmp_path, capsys, flags, message):
    from memlens.cli import main

    rc = main(["score", str(tmp_path), "--run", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and message in err
    assert "Traceback" not in err and len([ln for ln in err.splitlines() if ln.startswith("Error")]) == 1


def test_predict_distinctiveness_flag(tmp_path, capsys, monkeypatch):
    import pandas as pd

    import memlens.inference as inference
    from memlens.cli import main
    from memlens.inference import PredictResult

    demo, run = _run(tmp_path, n=12)
    assert main(["-q", "score", str(demo), "--run", str(run), "--metrics", "mse", "--feature-size", "32",
                 "--device", "cpu", "--index", "hnsw", "--hnsw-m", "4"]) == 0
    ids = (run / "latent_ids.txt").read_text().split()[:3]
    images = [str(demo / i) for i in ids]

    def fake_predict(sources, run, **kw):  # the predictor head is not what this tests
        return PredictResult(table=pd.DataFrame({"image": list(sources), "predicted_score": 0.5}))

    monkeypatch.setattr(inference, "predict_images", fake_predict)
    out = tmp_path / "pred.csv"
    capsys.readouterr()
    assert main(["predict", *images, "--run", str(run), "-o", str(out), "--distinctiveness", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "saved hnsw index" in err
    table = pd.read_csv(out)
    assert list(table.columns) == ["image", "predicted_score", "distinctiveness"]
    np.testing.assert_allclose(table["distinctiveness"], 0.0, atol=1e-4)
    assert main(["predict", images[0], "--model", "resmem", "--distinctiveness"]) == 2
    assert "--distinctiveness needs --run" in capsys.readouterr().err


def test_distinctiveness_index_flat_shards_and_errors(x):
    values, report = mx.distinctiveness_index(x, k=2, index="flat", shards=2, recall_sample=50)
    want, _ = _truth(x, 2)
    np.testing.assert_allclose(values, want.mean(1), rtol=1e-12)
    assert report.recall == 1.0 and report.shards == 2
    with pytest.raises(ConfigError, match="shards go with a FAISS index"):
        mx.distinctiveness_index(x, index="exact", shards=2)


def test_a_long_neighbour_search_logs_its_progress(x, monkeypatch, caplog):
    """A search of many chunks says how far it is, with a rate and the time left; the answer does not change."""
    import logging

    d1, i1, _ = mx.nearest_index(x, 2, index="ivf", recall_sample=0, seed=0)
    monkeypatch.setattr(mx, "_PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(mx, "_CHUNK_BYTES", 100 * 24 * 4)  # 100 queries per chunk: 6 chunks
    with caplog.at_level(logging.INFO, logger="memlens.index"):
        d2, i2, _ = mx.nearest_index(x, 2, index="ivf", recall_sample=0, seed=0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("neighbour search")]
    assert len(lines) == 5 and "24-d): 100 of 600 queries" in lines[0] and "500 of 600" in lines[-1]
    assert all("/s, about" in m and "min left" in m for m in lines)
    np.testing.assert_array_equal(i2, i1)
    np.testing.assert_array_equal(d2, d1)
