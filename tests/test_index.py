"""FAISS indexes for distinctiveness: flat equals the exact search, approximate ones report a true recall."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from scipy.spatial.distance import cdist

faiss = pytest.importorskip("faiss", reason="the faiss extra is not installed (pip install 'memlens[faiss]')")

from memlens.errors import ConfigError  # noqa: E402
from memlens.index import (  # noqa: E402
    ShardedLatents,
    choose_encoding,
    distinctiveness_index,
    estimate_index_bytes,
    exact_knn,
    nearest_index,
    recall_at_k,
)
from memlens.neighbors import distinctiveness  # noqa: E402


@pytest.fixture(scope="module")
def latents():
    """Clustered latents with low intrinsic dimension (like real codes), a duplicate pair and a zero row."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 16)) * 3
    z = centers[rng.integers(0, 20, 1500)] + rng.normal(size=(1500, 16))
    x = (z @ rng.normal(size=(16, 48)) + 0.05 * rng.normal(size=(1500, 48))).astype(np.float32)
    x[7] = x[8]  # a distinct image with identical values is a neighbour at distance 0
    x[9] = 0.0
    return x


def _truth(x, metric, k, exclude_self=True, groups=None, reference=None):
    d = cdist(x.astype(np.float64), x.astype(np.float64), metric="cosine" if metric == "cosine" else "euclidean")
    if metric == "cosine":  # scipy gives NaN for a zero vector; memlens defines its distance as 1
        zero = np.linalg.norm(x, axis=1) == 0
        d[zero, :] = 1.0
        d[:, zero] = 1.0
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    if groups is not None:
        g = np.asarray(groups)
        d[g[:, None] != g[None, :]] = np.inf
    if reference is not None:
        d[:, ~reference] = np.inf
    return np.sort(d, axis=1)[:, :k]


@pytest.mark.parametrize(("metric", "k"), [("euclidean", 1), ("cosine", 3)])
def test_flat_equals_exact_distinctiveness(latents, metric, k):
    groups = np.arange(len(latents)) % 3
    ref = np.arange(len(latents)) % 4 != 0
    for kw in ({}, {"groups": groups}, {"reference": ref}):
        want = distinctiveness(latents, k=k, metric=metric, **kw)
        got, report = distinctiveness_index(latents, k=k, metric=metric, index="flat", **kw)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
        assert report.kind == "flat" and report.params["search"] == "faiss-flat" and report.recall is None
        # beyond the memory budget the flat index falls back to the tiled exact search: same answer
        small, report = distinctiveness_index(latents, k=k, metric=metric, index="flat", memory_budget_mb=0.01, **kw)
        np.testing.assert_allclose(small, want, rtol=1e-6, atol=1e-9)
        assert report.params["search"] == "exact"
        if metric == "euclidean" and k == 1 and not kw:
            assert got[7] == got[8] == 0.0  # the duplicate pair


def test_exact_knn_in_chunks_matches_brute_force(latents):
    q = np.array([0, 7, 9, 100, 1499])
    for metric in ("euclidean", "cosine"):
        d, i = exact_knn(latents, 4, metric, queries=q, chunk_mb=0.05)  # many reference chunks
        np.testing.assert_allclose(d, _truth(latents, metric, 4)[q], rtol=1e-9, atol=1e-12)
        full = cdist(latents[q].astype(np.float64), latents.astype(np.float64),
                     metric="cosine" if metric == "cosine" else "euclidean")
        got = np.take_along_axis(full, i, axis=1)
        if metric == "cosine":
            got[q == 9] = 1.0
        np.testing.assert_allclose(got, d, rtol=1e-9, atol=1e-12)  # indices point at rows at those distances
        assert not (i == q[:, None]).any()  # never itself
    assert exact_knn(latents, 1, queries=[7])[1][0, 0] == 8  # the duplicate is the neighbour, at distance 0


@pytest.mark.parametrize(("index", "options"), [("ivf", {"nlist": 40, "nprobe": 2}), ("hnsw", {"hnsw_m": 8,
                                                                                           "ef_search": 16})])
def test_approximate_index_reports_its_true_recall(latents, index, options):
    n, k = len(latents), 3
    dist, idx, report = nearest_index(latents, k, "euclidean", index=index, recall_sample=n, **options)
    truth = _truth(latents, "euclidean", k)
    # every reported distance is the true distance to the row it names, and never below the exact one
    full = cdist(latents.astype(np.float64), latents.astype(np.float64))
    np.testing.assert_allclose(np.take_along_axis(full, idx, axis=1), dist, rtol=1e-9, atol=1e-12)
    assert (dist >= truth - 1e-9).all()
    assert not (idx == np.arange(n)[:, None]).any()
    # the recall in the report is recall@k against brute force (ties count as found)
    kth = truth[:, -1:]
    expected = np.mean(np.minimum((dist <= kth * (1 + 1e-9) + 1e-12).sum(axis=1), k) / k)
    assert report.recall == pytest.approx(expected, abs=1e-12)
    assert 0.3 < report.recall < 1.0  # deliberately weak settings: the trade is visible
    assert report.recall_sample == n and report.recall_k == k
    rel = np.abs(dist.mean(1) - truth.mean(1)) / truth.mean(1)
    assert report.rel_error_mean == pytest.approx(rel[np.isfinite(rel)].mean(), rel=1e-6)
    assert report.build_seconds > 0 and report.search_seconds > 0 and report.memory_bytes > 0
    # generous settings find (almost) every true neighbour
    strong = {"nprobe": 40} if index == "ivf" else {"ef_search": 256}
    values, report = distinctiveness_index(latents, k=k, index=index, recall_sample=300, seed=1,
                                           **{**options, **strong})
    assert report.recall >= 0.99
    np.testing.assert_allclose(np.median(values / distinctiveness(latents, k=k)), 1.0, atol=1e-9)


def test_groups_reference_and_cosine_with_an_approximate_index(latents):
    groups = np.arange(len(latents)) % 2
    ref = np.arange(len(latents)) >= 300
    values, report = distinctiveness_index(latents, k=2, metric="cosine", index="hnsw", groups=groups, reference=ref,
                                           recall_sample=400)
    truth = _truth(latents, "cosine", 2, groups=groups, reference=ref).mean(1)
    assert report.recall >= 0.95
    close = np.isclose(values, truth, rtol=1e-7, atol=1e-9)
    assert close.mean() >= 0.95 and (values >= truth - 1e-9).all()


def test_memory_budget_picks_a_compressed_encoding(latents):
    n, d = latents.shape
    assert choose_encoding("ivf", n, d, 100) == ("flat", None)
    enc, m = choose_encoding("ivf", n, d, 0.1)
    assert enc in ("sq8", "pq") and estimate_index_bytes("ivf", n, d, enc, pq_m=m) <= 0.1 * 2**20
    assert estimate_index_bytes("ivf", n, d, "sq8") < estimate_index_bytes("ivf", n, d, "flat")
    values, report = distinctiveness_index(latents, k=1, index="ivf", memory_budget_mb=0.1, nlist=20, nprobe=20,
                                           recall_sample=200)
    assert report.encoding in ("sq8",) or report.encoding.startswith("pq")
    assert report.memory_bytes <= report.memory_budget_bytes
    assert report.recall > 0.8  # candidates are re-ranked exactly, so compressed codes lose little
    with pytest.raises(ConfigError, match="memory budget"):
        distinctiveness_index(latents, k=1, index="hnsw", memory_budget_mb=0.01)


def test_sharded_latents(latents, tmp_path):
    parts = [latents[:500], latents[500:1200], latents[1200:]]
    for i, p in enumerate(parts):
        np.save(tmp_path / f"part-{i:05d}.latents.npy", p)
    sh = ShardedLatents(sorted(tmp_path.glob("part-*.latents.npy")))
    assert sh.shape == latents.shape and len(sh) == len(latents)
    np.testing.assert_array_equal(sh.rows(450, 1250), latents[450:1250])
    idx = np.array([1499, 0, 500, 499, 1200, 3, 3])
    np.testing.assert_array_equal(sh.take(idx), latents[idx])
    np.testing.assert_array_equal(sh[10:20], latents[10:20])
    np.testing.assert_array_equal(sh.as_array(tmp_path), latents)
    run = tmp_path / "run"
    (run / "latents").mkdir(parents=True)  # a Ray run's parts (--no-merge): RUN/latents/part-A-B.npy
    bounds = [0, 500, 1200, len(latents)]
    for i, p in enumerate(parts):
        np.save(run / "latents" / f"part-{bounds[i]:012d}-{bounds[i + 1]:012d}.npy", p)
    from_run = ShardedLatents.from_run(run)
    assert len(from_run.parts) == 3
    got, _ = distinctiveness_index(from_run, k=1, index="flat")
    np.testing.assert_allclose(got, distinctiveness(latents, k=1), rtol=1e-7)


def test_recall_at_k_counts_ties():
    true = np.array([[1.0, 2.0], [1.0, 1.0]])
    assert recall_at_k(np.array([[1.0, 2.0], [1.0, 1.0]]), true) == 1.0
    assert recall_at_k(np.array([[1.0, 3.0], [1.0, 1.0]]), true) == 0.75
    assert recall_at_k(np.array([[1.5, 2.0], [np.nan, np.nan]]), true) == 0.5


def test_cli_index_option(tmp_path, capsys):
    from memlens import models
    from memlens.cli import main
    from memlens.data import make_demo_set

    demo = make_demo_set(tmp_path / "demo", n_images=15, image_size=32, n_experience=0, n_observers=10, n_splits=3)
    runs = {}
    for kind in ("exact", "flat", "hnsw"):
        run = tmp_path / kind
        run.mkdir()
        models.save_autoencoder(run / "autoencoder.pt", models.create_autoencoder(
            "small", input_size=32, width=4, latent_channels=4, seed=0))
        rc = main(["-q", "score", str(demo), "--run", str(run), "--metrics", "mse", "--feature-size", "32",
                   "--device", "cpu", "--index", kind])
        out = capsys.readouterr()
        assert rc == 0, out.err
        runs[kind] = json.loads((run / "config.json").read_text())["score"]
        runs[kind + "_table"] = np.genfromtxt(run / "per_image.csv", delimiter=",", names=True, dtype=None,
                                              encoding="utf-8")
    assert runs["flat"]["index"] == "flat" and runs["exact"].get("index", "exact") == "exact"
    for col in ("distinctiveness", "distinctiveness_features"):
        np.testing.assert_allclose(runs["flat_table"][col], runs["exact_table"][col], rtol=1e-6)
    report = json.loads((tmp_path / "hnsw" / "index.json").read_text())
    assert report["distinctiveness"]["kind"] == "hnsw" and report["distinctiveness"]["recall_sample"] == 15
    assert runs["hnsw"]["index_recall"]["distinctiveness"] == report["distinctiveness"]["recall"]
    assert "recall@1" in out.out


def test_missing_faiss_is_a_clear_error(latents, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ConfigError, match=r"memlens\[faiss\]"):
        distinctiveness_index(latents, index="ivf")
    with pytest.raises(ConfigError, match="index must be one of"):
        distinctiveness_index(latents, index="lsh")


def test_flat_leaves_read_only_latents_alone(latents, tmp_path):
    np.save(tmp_path / "latents.npy", latents)
    mm = np.load(tmp_path / "latents.npy", mmap_mode="r")  # as in a run directory
    got, _ = distinctiveness_index(mm, k=1, metric="cosine", index="flat")
    np.testing.assert_allclose(got, distinctiveness(latents.copy(), k=1, metric="cosine"), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(np.load(tmp_path / "latents.npy"), latents)
