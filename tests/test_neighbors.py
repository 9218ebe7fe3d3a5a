"""memlens.neighbors: exact k-NN distinctiveness against a brute-force scipy reference."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from memlens.neighbors import distinctiveness, nearest_neighbors


def brute(x, k, metric="euclidean", ref=None, groups=None, exclude_self=True):
    """Reference: float64 cdist, self (by index) removed, restricted to ref rows and same-group rows."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    n = len(x)
    d = cdist(x, x, metric)
    if metric == "cosine":
        zero = np.linalg.norm(x, axis=1) == 0
        d[zero, :] = 1.0
        d[:, zero] = 1.0
    allowed = np.ones((n, n), dtype=bool)
    if ref is not None:
        mask = np.zeros(n, dtype=bool)
        mask[ref] = True
        allowed &= mask[None, :]
    if groups is not None:
        g = np.asarray(groups)
        allowed &= g[:, None] == g[None, :]
    if exclude_self:
        np.fill_diagonal(allowed, False)
    d = np.where(allowed, d, np.inf)
    srt = np.sort(d, axis=1)[:, :k]
    out = srt.mean(axis=1)
    out[~np.isfinite(out)] = np.nan
    return out


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(157, 23)).astype(np.float32)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_matches_brute_force(data, metric, k, backend):
    got = distinctiveness(data, k=k, metric=metric, backend=backend)
    np.testing.assert_allclose(got, brute(data, k, metric), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("budget_mb", [0.01, 0.05, 1, 256])
def test_chunk_size_invariance(data, budget_mb):
    ref = distinctiveness(data, k=4, memory_budget_mb=256)
    got = distinctiveness(data, k=4, memory_budget_mb=budget_mb)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_allclose(got, brute(data, 4), rtol=1e-12)


def test_neighbour_indices(data):
    d, i = nearest_neighbors(data, k=3)
    full = cdist(data.astype(np.float64), data.astype(np.float64))
    np.fill_diagonal(full, np.inf)
    np.testing.assert_array_equal(i, np.argsort(full, axis=1)[:, :3])
    np.testing.assert_allclose(d, np.sort(full, axis=1)[:, :3], rtol=1e-12)
    assert np.all(np.diff(d, axis=1) >= 0)


@pytest.mark.parametrize("as_mask", [True, False])
@pytest.mark.parametrize("budget_mb", [0.02, 256])
def test_reference_subset(data, as_mask, budget_mb):
    rng = np.random.default_rng(1)
    ref_idx = np.sort(rng.choice(len(data), size=60, replace=False))
    reference = np.isin(np.arange(len(data)), ref_idx) if as_mask else ref_idx
    got = distinctiveness(data, k=2, reference=reference, memory_budget_mb=budget_mb)
    np.testing.assert_allclose(got, brute(data, 2, ref=ref_idx), rtol=1e-12)
    # a query outside the reference may use every reference row; one inside never uses itself
    _, idx = nearest_neighbors(data, k=2, reference=reference)
    assert np.isin(idx, ref_idx).all()
    assert not (idx == np.arange(len(data))[:, None]).any()


def test_groups(data):
    groups = np.array(["a", "b", "c"])[np.arange(len(data)) % 3]
    got = distinctiveness(data, k=2, metric="cosine", groups=groups.tolist())
    np.testing.assert_allclose(got, brute(data, 2, "cosine", groups=groups), rtol=1e-12)
    _, idx = nearest_neighbors(data, k=2, groups=groups)
    assert (groups[idx] == groups[:, None]).all()


def test_groups_with_reference_and_singleton(data, caplog):
    groups = np.arange(len(data)) % 4
    groups[0] = 99  # a group of one image has no neighbours
    ref = np.arange(len(data)) % 2 == 0
    with caplog.at_level(logging.WARNING, logger="memlens.neighbors"):
        got = distinctiveness(data, k=1, groups=groups, reference=ref)
    want = brute(data, 1, ref=np.flatnonzero(ref), groups=groups)
    assert np.isnan(got[0]) and np.isnan(want[0])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert "fewer than k=1" in caplog.text


def test_float16_and_higher_dimensional_input():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(80, 4, 3, 3)).astype(np.float16)
    got = distinctiveness(x, k=2)
    np.testing.assert_allclose(got, brute(x.astype(np.float64), 2), rtol=1e-12)


def test_memmap_input(tmp_path, data):
    path = tmp_path / "latents.npy"
    np.save(path, data)
    mm = np.load(path, mmap_mode="r")
    got = distinctiveness(mm, k=3, memory_budget_mb=0.02)
    np.testing.assert_allclose(got, brute(data, 3), rtol=1e-12)


def test_torch_tensor_input(data):
    torch = pytest.importorskip("torch")
    got = distinctiveness(torch.from_numpy(data), k=1)
    np.testing.assert_allclose(got, brute(data, 1), rtol=1e-12)


def test_planted_outlier_ranks_first():
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(200, 64)) + 2.0).astype(np.float32)  # a cloud away from the origin
    x[137] = -x[137]  # far away and pointing the other way
    for metric in ("euclidean", "cosine"):
        d = distinctiveness(x, k=1, metric=metric)
        assert int(np.argmax(d)) == 137
        assert d[137] > 2 * np.sort(d)[-2]


def test_duplicates_are_neighbours_at_zero(data):
    x = data.copy()
    x[5] = x[50]
    x[60:75] = x[60]  # a cluster of 15 identical rows: more than the candidates kept per row
    for k in (1, 3, 14):
        got = distinctiveness(x, k=k)
        np.testing.assert_allclose(got, brute(x, k), rtol=1e-12, atol=1e-15)
        assert got[60:75].tolist() == [0.0] * 15
    d1 = distinctiveness(x, k=1)
    assert d1[5] == 0.0 and d1[50] == 0.0
    # with k beyond the cluster the neighbours outside it enter the mean
    assert distinctiveness(x, k=15)[60] > 0


def test_near_duplicates_precise_despite_offset():
    """A large common offset and tiny differences: ||a||^2 + ||b||^2 - 2ab cancels in float32."""
    rng = np.random.default_rng(4)
    base = rng.normal(size=(1, 300)) * 0.5 + 1000.0
    x = (base + rng.normal(size=(60, 300)) * 1e-3).astype(np.float32)
    np.testing.assert_allclose(distinctiveness(x, k=2), brute(x, 2), rtol=1e-9)
    # cosine distances here are ~1e-12, below what 1 - cos resolves in float64: the reference uses
    # 0.5 * ||u/|u| - v/|v|||^2 in extended precision
    u = x.astype(np.longdouble)
    u /= np.sqrt((u * u).sum(axis=1, keepdims=True))
    diff = u[:, None, :] - u[None, :, :]
    ref = 0.5 * (diff * diff).sum(axis=2)
    np.fill_diagonal(ref, np.inf)
    want = np.sort(ref.astype(np.float64), axis=1)[:, :2].mean(axis=1)
    got = distinctiveness(x, k=2, metric="cosine")
    assert want.max() < 1e-11
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_exact_ties_beyond_all_candidates_use_brute_force():
    """The origin has 60 neighbours at exactly distance 1 (more than every candidate stage keeps)."""
    dim = 30
    x = np.concatenate([np.zeros((1, dim)), np.eye(dim), -np.eye(dim), 5 * np.ones((1, dim))]).astype(np.float32)
    got = distinctiveness(x, k=3)
    np.testing.assert_allclose(got, brute(x, 3), rtol=1e-12)
    assert got[0] == 1.0


def test_cosine_zero_vector_is_at_distance_one(data):
    x = data.copy()
    x[7] = 0
    d = distinctiveness(x, k=1, metric="cosine")
    assert d[7] == 1.0
    np.testing.assert_allclose(d, brute(x, 1, "cosine"), rtol=1e-12)


def test_float64_products(data):
    got = distinctiveness(data.astype(np.float64), k=2, dtype="float64")
    np.testing.assert_allclose(got, brute(data, 2), rtol=1e-12)


def test_standardize_is_monotone_z_score(data):
    raw = distinctiveness(data, k=2)
    z = distinctiveness(data, k=2, standardize=True)
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1) < 1e-12
    np.testing.assert_array_equal(np.argsort(raw), np.argsort(z))


def test_include_self_gives_zero(data):
    assert np.all(distinctiveness(data, k=1, exclude_self=False) == 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": 0}, "k must be a positive integer"),
        ({"metric": "manhattan"}, "metric must be one of"),
        ({"reference": np.ones(3, dtype=bool)}, "boolean reference mask"),
        ({"reference": np.array([0, 500])}, "reference indices"),
        ({"groups": [1, 2]}, "one label per row"),
        ({"index": "annoy"}, "index must be one of"),
        ({"memory_budget_mb": 0}, "memory_budget_mb"),
    ],
)
def test_bad_arguments(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        distinctiveness(data, **kwargs)


def test_non_finite_latents_rejected(data):
    x = data.copy()
    x[12, 3] = np.nan
    with pytest.raises(ValueError, match="row 12"):
        distinctiveness(x)
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        distinctiveness(np.zeros(5))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_faiss_flat_matches(data, metric):
    pytest.importorskip("faiss")
    got = distinctiveness(data, k=3, metric=metric, index="faiss-flat", reference=np.arange(0, 157, 2))
    np.testing.assert_allclose(got, brute(data, 3, metric, ref=np.arange(0, 157, 2)), rtol=1e-12)
    x = data.copy()
    x[60:75] = x[60]
    np.testing.assert_allclose(distinctiveness(x, k=2, index="faiss-flat"), brute(x, 2), rtol=1e-12, atol=1e-15)


@pytest.mark.gpu
def test_cuda_matches(data):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for metric in ("euclidean", "cosine"):
        got = distinctiveness(data, k=3, metric=metric, device="cuda", memory_budget_mb=0.05)
        np.testing.assert_allclose(got, brute(data, 3, metric), rtol=1e-12)
    # a caller's global TF32 setting neither breaks the certified result nor is changed by the search
    prev = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        x = np.abs(data) + 3.0  # non-negative codes with a large common offset: TF32 would mis-rank them
        got = distinctiveness(x, k=1, device="cuda", memory_budget_mb=0.05)
        np.testing.assert_allclose(got, brute(x, 1), rtol=1e-12)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(prev)


def test_full_float32_products_restore_either_precision_api():
    """The CUDA Gram products switch TF32 off and restore the caller's setting, made with the new API or the
    legacy one; on the CPU nothing is touched (a process on the new API must not hit the legacy getter)."""
    torch = pytest.importorskip("torch")
    from memlens.neighbors import _ieee_fp32_matmul

    mm = torch.backends.cuda.matmul
    if not hasattr(mm, "fp32_precision"):
        pytest.skip("torch without the fp32_precision API")
    before = mm.fp32_precision
    try:
        mm.fp32_precision = "tf32"  # new API: the legacy getter would now raise
        x = np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32)
        got = distinctiveness(x, k=1, backend="torch", device="cpu")
        np.testing.assert_allclose(got, brute(x, 1), rtol=1e-12)
        with _ieee_fp32_matmul(torch):
            assert mm.fp32_precision == "ieee"
        assert mm.fp32_precision == "tf32"
        mm.fp32_precision = before
        torch.set_float32_matmul_precision("high")  # legacy API
        with _ieee_fp32_matmul(torch):
            assert mm.fp32_precision == "ieee"
        assert torch.get_float32_matmul_precision() == "high" and mm.allow_tf32
    finally:
        mm.fp32_precision = before
        torch.set_float32_matmul_precision("highest")
