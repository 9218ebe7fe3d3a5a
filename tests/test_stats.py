"""memlens.stats: correlations, paired bootstrap CIs (percentile, BCa), partial, within-group, reliability."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import memlens.stats.resampling as R
from memlens.data.halves import SplitHalves
from memlens.errors import DataError
from memlens.stats import CorrResult, correlate, correlation_table, spearman_brown, split_half_reliability


def _pair(n: int, rho: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = rho * x + math.sqrt(1 - rho ** 2) * rng.normal(size=n)
    return x, y


def _scipy_stat(method: str):
    """A vectorised statistic for scipy.stats.bootstrap (ranks along the resample axis for Spearman)."""

    def stat(x, y, axis=-1):
        if method == "spearman":
            x, y = sps.rankdata(x, axis=axis), sps.rankdata(y, axis=axis)
        xc = x - x.mean(axis=axis, keepdims=True)
        yc = y - y.mean(axis=axis, keepdims=True)
        return (xc * yc).sum(axis=axis) / np.sqrt((xc ** 2).sum(axis=axis) * (yc ** 2).sum(axis=axis))

    return stat


def _scipy_bootstrap(x, y, method, ci, n_resamples, seed):
    kw = dict(paired=True, vectorized=True, n_resamples=n_resamples, method=ci, confidence_level=0.95)
    try:
        return sps.bootstrap((x, y), _scipy_stat(method), rng=np.random.default_rng(seed), **kw)
    except TypeError:  # scipy < 1.15
        return sps.bootstrap((x, y), _scipy_stat(method), random_state=np.random.default_rng(seed), **kw)


# ---------------------------------------------------------------------------------------------- point estimate


@pytest.mark.parametrize("method", ["spearman", "pearson"])
def test_r_and_p_match_scipy(method):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 15, size=120).astype(float)  # many ties
    y = x + rng.normal(scale=4, size=120)
    y[::7] = np.round(y[::7])
    res = correlate(x, y, method=method, n_boot=0)
    ref = sps.spearmanr(x, y) if method == "spearman" else sps.pearsonr(x, y)
    assert res.n == 120
    np.testing.assert_allclose(res.r, ref.statistic, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res.p_value, ref.pvalue, rtol=1e-8)
    assert math.isnan(res.ci_low) and math.isnan(res.ci_high)


def test_rank_rows_matches_rankdata_with_ties():
    rng = np.random.default_rng(0)
    v = rng.integers(0, 6, size=40).astype(float)
    uniq, ids = np.unique(v, return_inverse=True)
    idx = rng.integers(0, 40, size=(5, 40))
    got = R._rank_rows(ids[idx], len(uniq))
    want = sps.rankdata(v[idx], axis=1)
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------- bootstrap


@pytest.mark.parametrize("method", ["spearman", "pearson"])
@pytest.mark.parametrize("ci", ["percentile", "bca"])
def test_interval_agrees_with_scipy_paired_bootstrap(method, ci):
    x, y = _pair(150, 0.4, seed=11)
    y = np.exp(y)  # skewed, so Pearson's bootstrap distribution is asymmetric and BCa matters
    b = 4000
    ours = correlate(x, y, method=method, n_boot=b, ci=ci, seed=5)
    ref = _scipy_bootstrap(x, y, method, "BCa" if ci == "bca" else "percentile", b, seed=6)
    se = ref.standard_error
    # independent Monte-Carlo runs: each endpoint's MC error is ~0.05 SE for B = 4000
    assert abs(ours.ci_low - ref.confidence_interval.low) < 0.3 * se
    assert abs(ours.ci_high - ref.confidence_interval.high) < 0.3 * se
    assert ours.ci_low < ours.r < ours.ci_high


def test_bca_differs_from_percentile_when_skewed():
    x, y = _pair(60, 0.85, seed=2)  # r near 1: the bootstrap distribution is left-skewed
    pc = correlate(x, y, method="pearson", n_boot=3000, ci="percentile", seed=1)
    bca = correlate(x, y, method="pearson", n_boot=3000, ci="bca", seed=1)
    ref = _scipy_bootstrap(x, y, "pearson", "BCa", 3000, seed=2)
    se = ref.standard_error
    assert abs(bca.ci_low - ref.confidence_interval.low) < 0.3 * se
    # BCa moves the interval: both endpoints shift in the same direction away from percentile
    assert (bca.ci_low - pc.ci_low) * (bca.ci_high - pc.ci_high) > 0


def test_same_seed_same_result_other_seed_differs():
    x, y = _pair(200, 0.3, seed=4)
    a = correlate(x, y, n_boot=300, seed=7, ci="bca", permutation=200)
    b = correlate(x, y, n_boot=300, seed=7, ci="bca", permutation=200)
    c = correlate(x, y, n_boot=300, seed=8, ci="bca", permutation=200)
    assert a == b
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    assert a.r == c.r


def test_chunk_size_does_not_change_result(monkeypatch):
    x, y = _pair(300, 0.5, seed=9)
    a = correlate(x, y, n_boot=500, seed=3, ci="bca")
    monkeypatch.setattr(R, "_CHUNK_ELEMENTS", 5000)
    b = correlate(x, y, n_boot=500, seed=3, ci="bca")
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)


@pytest.mark.parametrize("method", ["spearman", "pearson"])
@pytest.mark.parametrize("ci", ["percentile", "bca"])
def test_identity_gives_ci_above_099(method, ci):
    x = np.random.default_rng(1).normal(size=80)
    res = correlate(x, x.copy(), method=method, n_boot=300, ci=ci)
    assert res.r == pytest.approx(1.0)
    assert res.ci_low > 0.99 and res.ci_high <= 1.0


def test_independent_data_ci_covers_zero_at_nominal_rate():
    covered = 0
    trials = 40
    for s in range(trials):
        rng = np.random.default_rng(100 + s)
        res = correlate(rng.normal(size=80), rng.normal(size=80), n_boot=400, seed=s)
        covered += res.ci_low <= 0 <= res.ci_high
    assert covered / trials >= 0.85  # nominal 0.95; P(rate < 0.85) is tiny


def test_strong_correlation_ci_excludes_zero_and_contains_r():
    x, y = _pair(200, 0.6, seed=12)
    res = correlate(x, y, n_boot=500)
    assert 0 < res.ci_low < res.r < res.ci_high


def test_paired_resampling_unlike_independent_resampling():
    """Resampling x and y independently (the old mistake) centres the interval on 0; ours on r."""
    x, y = _pair(200, 0.6, seed=13)
    rng = np.random.default_rng(0)
    wrong = [sps.spearmanr(rng.choice(x, 200), rng.choice(y, 200)).statistic for _ in range(300)]
    res = correlate(x, y, n_boot=300)
    assert abs(np.mean(wrong)) < 0.05
    assert res.ci_low > 0.4


def test_bca_jackknife_subset_close_to_full(monkeypatch):
    x, y = _pair(400, 0.5, seed=14)
    y = np.exp(y)
    full = correlate(x, y, method="pearson", n_boot=2000, ci="bca", seed=2)
    monkeypatch.setattr(R, "_JACKKNIFE_MAX", 200)
    sub = correlate(x, y, method="pearson", n_boot=2000, ci="bca", seed=2)
    width = full.ci_high - full.ci_low
    assert abs(sub.ci_low - full.ci_low) < 0.05 * width
    assert abs(sub.ci_high - full.ci_high) < 0.05 * width


# ---------------------------------------------------------------------------------------------- permutation


def test_permutation_p_close_to_analytic_for_null_data():
    rng = np.random.default_rng(21)
    x, y = rng.normal(size=100), rng.normal(size=100)
    res = correlate(x, y, permutation=3000, n_boot=0)
    assert res.p_perm is not None and 0 < res.p_perm <= 1
    assert abs(res.p_perm - res.p_value) < 0.05


def test_permutation_p_minimum_for_strong_effect():
    x, y = _pair(100, 0.9, seed=22)
    res = correlate(x, y, permutation=500, n_boot=0)
    assert res.p_perm == pytest.approx(1 / 501)


def test_partial_permutation_p_close_to_analytic():
    rng = np.random.default_rng(23)
    c = rng.normal(size=150)
    x = c + rng.normal(size=150)
    y = c + rng.normal(size=150) + 0.2 * x
    res = correlate(x, y, control=c, permutation=3000, n_boot=0, method="pearson")
    assert abs(res.p_perm - res.p_value) < 0.05


# ---------------------------------------------------------------------------------------------- partial


def _residual(v: np.ndarray, c: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones(len(v)), c])
    beta, *_ = np.linalg.lstsq(design, v, rcond=None)
    return v - design @ beta


@pytest.mark.parametrize("method", ["spearman", "pearson"])
@pytest.mark.parametrize("k", [1, 2])
def test_partial_equals_regression_residual_correlation(method, k):
    rng = np.random.default_rng(30 + k)
    n = 90
    c = rng.normal(size=(n, k))
    x = c.sum(axis=1) + rng.normal(size=n)
    y = np.exp(c[:, 0] + 0.5 * x + rng.normal(size=n))
    res = correlate(x, y, method=method, control=c, n_boot=200)
    if method == "spearman":
        xr, yr = sps.rankdata(x), sps.rankdata(y)
        cr = np.column_stack([sps.rankdata(c[:, j]) for j in range(k)])
    else:
        xr, yr, cr = x, y, c
    want = np.corrcoef(_residual(xr, cr), _residual(yr, cr))[0, 1]
    assert res.r == pytest.approx(want, abs=1e-12)
    assert res.control == tuple(f"control{j}" for j in range(k))
    # t test with n - 2 - k degrees of freedom
    t = want * math.sqrt((n - 2 - k) / (1 - want ** 2))
    assert res.p_value == pytest.approx(2 * sps.t.sf(abs(t), n - 2 - k), rel=1e-8)
    assert res.ci_low < res.r < res.ci_high


def test_partial_removes_confound_and_names_controls():
    covered, partial_rs = 0, []
    for s in range(10):
        rng = np.random.default_rng(310 + s)
        z = rng.normal(size=200)
        x = z + 0.3 * rng.normal(size=200)
        y = z + 0.3 * rng.normal(size=200)
        raw = correlate(x, y, n_boot=0)
        part = correlate(x, y, control=pd.Series(z, name="confound"), n_boot=200, seed=s, method="pearson")
        assert raw.r > 0.7
        assert part.control == ("confound",)
        partial_rs.append(part.r)
        covered += part.ci_low <= 0 <= part.ci_high
    assert abs(np.mean(partial_rs)) < 0.07  # SE of the mean ~0.022
    assert covered >= 7


def test_partial_with_collinear_control_is_nan(caplog):
    x, y = _pair(50, 0.5, seed=32)
    with caplog.at_level(logging.WARNING, logger="memlens.stats"):
        res = correlate(x, y, control=2 * x + 1, n_boot=50, method="pearson")
    assert math.isnan(res.r)
    assert "no variance left" in caplog.text


# ---------------------------------------------------------------------------------------------- within-group


def _two_groups(seed: int, n: int = 200) -> pd.DataFrame:
    """Group B has higher x and higher y; inside each group x and y are independent."""
    rng = np.random.default_rng(seed)
    g = np.repeat(["A", "B"], n // 2)
    shift = (g == "B") * 3.0
    return pd.DataFrame({"x": shift + rng.normal(size=n), "score": shift + rng.normal(size=n), "cat": g})


def test_pooled_strong_within_zero():
    df = _two_groups(40)
    tab = correlation_table(df, x="x", y="score", by="cat", n_boot=400, seed=1)
    pooled = tab[tab.scope == "pooled"].iloc[0]
    within = tab[tab.scope == "within"].iloc[0]
    groups = tab[tab.scope == "group"]
    assert list(groups.group) == ["A", "B"] and list(groups.n) == [100, 100]
    assert pooled.r > 0.6 and pooled.ci_low > 0.5
    assert abs(within.r) < 0.15 and within.ci_low < 0 < within.ci_high
    assert within.n == 200 and within.n_groups == 2
    for _, row in groups.iterrows():
        assert abs(row.r) < 0.3


def test_within_equals_correlation_of_group_demeaned_ranks():
    df = _two_groups(41, n=60)
    df.loc[:29, "x"] += df.loc[:29, "score"]  # an effect inside group A
    res = correlate(df.x, df.score, groups=df.cat, n_boot=0)
    rx, ry = sps.rankdata(df.x), sps.rankdata(df.score)
    dx = rx - pd.Series(rx).groupby(df.cat.values).transform("mean").to_numpy()
    dy = ry - pd.Series(ry).groupby(df.cat.values).transform("mean").to_numpy()
    assert res.r == pytest.approx(np.corrcoef(dx, dy)[0, 1], abs=1e-12)
    assert res.n_groups == 2
    t = res.r * math.sqrt((60 - 3) / (1 - res.r ** 2))  # df = n - 2 - (groups - 1)
    assert res.p_value == pytest.approx(2 * sps.t.sf(abs(t), 57), rel=1e-8)


def test_within_permutation_p_is_not_fooled_by_groups():
    ps = []
    for s in range(8):
        df = _two_groups(50 + s, n=100)
        ps.append(correlate(df.x, df.score, groups=df.cat, n_boot=0, permutation=300, seed=s).p_perm)
        assert correlate(df.x, df.score, n_boot=0, permutation=300, seed=s).p_perm < 0.01
    assert np.mean(ps) > 0.2  # uniform under the null inside groups (mean 0.5)


# ---------------------------------------------------------------------------------------------- table


def test_correlation_table_rows_partial_and_ceiling():
    df = _two_groups(60, n=120)
    df["d"] = df.x + np.random.default_rng(0).normal(size=120)
    tab = correlation_table(df, x=["x", "d"], y="score", by="cat", control={"x": ["d"], "d": [["x"]]},
                            n_boot=100, ceiling=0.8)
    assert list(tab.scope) == ["pooled", "group", "group", "within", "partial"] * 2
    part = tab[tab.scope == "partial"]
    assert list(part.control) == ["d", "x"]
    full = tab[tab.scope != "partial"]
    np.testing.assert_allclose(full.r_over_ceiling, full.r / 0.8)
    assert part.ceiling.isna().all() and part.r_over_ceiling.isna().all()  # no ceiling for a partial r
    # one family: Benjamini-Hochberg over all ten rows
    assert list(tab.columns[tab.columns.get_loc("p_value"):][:2]) == ["p_value", "p_fdr"]
    np.testing.assert_allclose(tab.p_fdr, sps.false_discovery_control(tab.p_value, method="bh"), rtol=1e-12)
    assert (tab.p_fdr >= tab.p_value).all()
    one = correlate(df.x, df.score, control=df[["d"]], n_boot=100)
    row = part.iloc[0]
    assert (row.r, row.ci_low, row.ci_high, row.n) == (one.r, one.ci_low, one.ci_high, one.n)


def test_fdr_bh_against_scipy_and_nan():
    from memlens.stats import fdr_bh

    rng = np.random.default_rng(5)
    p = np.concatenate([rng.random(40), rng.random(10) * 1e-3, [0.0, 1.0, 0.02, 0.02]])
    rng.shuffle(p)
    np.testing.assert_allclose(fdr_bh(p), sps.false_discovery_control(p, method="bh"), rtol=1e-12)
    # by hand: m = 4, sorted 0.01 0.02 0.03 0.5 -> 0.04, 0.04, 0.04, 0.5 (monotone from the top)
    got = fdr_bh([0.5, np.nan, 0.03, 0.01, 0.02])
    np.testing.assert_allclose(got, [0.5, np.nan, 0.04, 0.04, 0.04])
    assert np.isnan(fdr_bh([np.nan, np.nan])).all() and fdr_bh([]).shape == (0,)


def test_correlation_table_ceiling_from_split_halves():
    rng = np.random.default_rng(61)
    n = 150
    true = rng.normal(size=n)
    ids = [f"im{i}" for i in range(n)]
    halves = SplitHalves(tuple(reversed(ids)), (true + rng.normal(size=(4, n)))[:, ::-1],
                         (true + rng.normal(size=(4, n)))[:, ::-1])
    df = pd.DataFrame({"image_id": ids, "score": true, "x": true + rng.normal(size=n),
                       "cat": np.where(np.arange(n) < 70, "a", "b")})
    tab = correlation_table(df, x="x", by="cat", n_boot=0, ceiling=halves)
    pooled = tab[tab.scope == "pooled"].iloc[0]
    sub_all = halves.subset(ids)
    sh = np.mean([sps.spearmanr(sub_all.half1[i], sub_all.half2[i]).statistic for i in range(4)])
    want = math.sqrt(2 * sh / (1 + sh))  # sqrt of the Spearman-Brown reliability of the full-group score
    assert pooled.split_half == pytest.approx(sh)
    assert pooled.ceiling == pytest.approx(want) and pooled.ceiling > pooled.split_half
    assert pooled.r_over_ceiling == pytest.approx(pooled.r / want)
    ga = tab[(tab.scope == "group") & (tab.group == "a")].iloc[0]
    sub = halves.subset(ids[:70])
    sh_a = np.mean([sps.spearmanr(sub.half1[i], sub.half2[i]).statistic for i in range(4)])
    assert ga.ceiling == pytest.approx(math.sqrt(2 * sh_a / (1 + sh_a)))
    assert np.isfinite(tab[tab.scope == "within"].iloc[0].ceiling)


def test_correlation_table_errors_name_columns():
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": ["x", "y", "z"], "score": [1.0, 3.0, 2.0]})
    with pytest.raises(DataError, match=r"no column 'nope'.*columns available: a, b, score"):
        correlation_table(df, x="nope")
    with pytest.raises(DataError, match=r"column 'b' is not numeric.*'x'"):
        correlation_table(df, x="b", n_boot=0)


# ---------------------------------------------------------------------------------------------- degenerate


def test_too_few_rows_gives_nan_and_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="memlens.stats"):
        res = correlate([1.0, 2.0], [2.0, 1.0], n_boot=10, label="tiny")
    assert math.isnan(res.r) and res.n == 2
    assert "tiny: too few complete rows (n = 2)" in caplog.text


def test_constant_input_gives_nan_and_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="memlens.stats"):
        res = correlate([1.0, 2.0, 3.0, 4.0], [5.0] * 4, n_boot=10)
    assert math.isnan(res.r) and math.isnan(res.ci_low) and math.isnan(res.p_value)
    assert "y is constant" in caplog.text


def test_nans_dropped_pairwise_and_counted():
    x, y = _pair(50, 0.5, seed=70)
    x[3], y[10], y[11] = np.nan, np.nan, np.nan
    res = correlate(x, y, n_boot=0)
    keep = np.isfinite(x) & np.isfinite(y)
    assert res.n == 47
    assert res.r == pytest.approx(sps.spearmanr(x[keep], y[keep]).statistic, abs=1e-12)
    with pytest.raises(DataError, match="3 of 50 rows have missing values"):
        correlate(x, y, nan_policy="raise")


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        correlate([1, 2, 3], [1, 2, 3], method="kendall")
    with pytest.raises(DataError, match="x has 3 values but y has 2"):
        correlate([1, 2, 3], [1, 2])
    with pytest.raises(DataError, match="not numeric"):
        correlate(["a", "b", "c"], [1, 2, 3])


def test_result_frame_and_dict():
    x, y = _pair(40, 0.5, seed=71)
    c = np.random.default_rng(72).normal(size=(40, 2))
    res = correlate(x, y, n_boot=50, control=c)
    frame = res.to_frame()
    assert frame.shape[0] == 1
    for col in ("n", "r", "ci_low", "ci_high", "p_value", "method", "n_boot", "seed"):
        assert frame[col].iloc[0] == getattr(res, col)
    assert frame["control"].iloc[0] == "control0+control1"
    d = res.to_dict()
    assert d["control"] == ["control0", "control1"] and d["n"] == 40
    assert isinstance(res, CorrResult) and "n = 40" in str(res)


# ---------------------------------------------------------------------------------------------- reliability


def test_split_half_reliability_matches_manual_and_handles_nan():
    rng = np.random.default_rng(80)
    true = rng.normal(size=(1, 90))
    h1 = true + rng.normal(size=(6, 90))
    h2 = true + rng.normal(size=(6, 90))
    h1[2, 5] = np.nan
    rel = split_half_reliability((h1, h2))
    manual = []
    for i in range(6):
        ok = np.isfinite(h1[i]) & np.isfinite(h2[i])
        manual.append(sps.spearmanr(h1[i, ok], h2[i, ok]).statistic)
    assert rel["n_images"] == 90 and rel["n_splits"] == 6
    assert rel["spearman_mean"] == pytest.approx(np.mean(manual), abs=1e-12)
    assert rel["spearman_sd"] == pytest.approx(np.std(manual, ddof=1), abs=1e-12)
    r = rel["spearman_mean"]
    assert rel["spearman_brown"] == pytest.approx(2 * r / (1 + r))
    assert rel["split_half"] == rel["spearman_mean"]
    assert rel["ceiling"] == pytest.approx(math.sqrt(2 * r / (1 + r)))
    via_obj = split_half_reliability(SplitHalves(tuple(map(str, range(90))), h1, h2))
    assert via_obj == rel
    pear = split_half_reliability((h1, h2), method="pearson")
    assert pear["split_half"] == pear["pearson_mean"] != rel["split_half"]
    assert pear["ceiling"] == pytest.approx(math.sqrt(spearman_brown(pear["pearson_mean"])))


def test_analyze_partials_the_exposure_position_out_of_the_exposure_loss():
    """recon_exposure drifts with the position in the stream (the model adapts): a partial row removes it."""
    from memlens.stats import analyze_per_image

    rng = np.random.default_rng(8)
    n = 200
    order = rng.permutation(n).astype(float)
    score = rng.normal(size=n) + 0.02 * order  # later images happen to score higher
    df = pd.DataFrame({"image_id": [f"i{j}" for j in range(n)], "score": score,
                       "recon_exposure": 1.0 - 0.004 * order + 0.1 * rng.normal(size=n),
                       "exposure_order": order, "distinctiveness": rng.normal(size=n)})
    tab = analyze_per_image(df, n_boot=0)
    assert "exposure_order" not in set(tab.x)  # not a measure
    rows = tab[(tab.x == "recon_exposure") & (tab.scope == "partial")]
    assert list(rows.control) == ["distinctiveness", "exposure_order"]
    pooled = tab[(tab.x == "recon_exposure") & (tab.scope == "pooled")].r.iloc[0]
    by_order = rows[rows.control == "exposure_order"].r.iloc[0]
    assert pooled < -0.5 and abs(by_order) < 0.2  # the pooled association was the position's
    ref = correlate(df.recon_exposure, df.score, control=df[["exposure_order"]], n_boot=0)
    assert by_order == pytest.approx(ref.r)


def test_table_sums_up_row_warnings_in_one_line(caplog):
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"x": rng.normal(size=40), "score": rng.normal(size=40),
                       "cat": ["big"] * 36 + ["tiny1", "tiny1", "tiny2", "tiny2"]})
    with caplog.at_level("DEBUG", logger="memlens.stats"):
        tab = correlation_table(df, x="x", by="cat", n_boot=50)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "2 warning(s) over the table's 6 rows" in warnings[0].getMessage()
    assert "tiny1): too few complete rows (n = 2)" in caplog.text  # the details, at debug level
    assert tab[tab.group.isin(["tiny1", "tiny2"])].r.isna().all()


# ------------------------------------------------------------------------- between, difference, halves kinds


def test_between_groups_is_the_correlation_of_group_means():
    from memlens.stats.parts import between_groups

    rng = np.random.default_rng(90)
    groups = np.repeat(list("abcdef"), 30)
    level = pd.Series(groups).map(dict(zip("abcdef", [0, 3, 1, 5, 2, 4], strict=True))).to_numpy(float)
    x = level + rng.normal(size=180)
    y = -level + rng.normal(size=180)  # between groups: a negative relation
    res = between_groups(x, y, groups, n_boot=300, seed=1)
    mx = pd.Series(x).groupby(groups).mean()
    my = pd.Series(y).groupby(groups).mean()
    assert res.r == pytest.approx(sps.spearmanr(mx, my).statistic)
    assert res.n == 180 and res.n_groups == 6
    assert res.ci_low <= res.r <= res.ci_high and res.ci_high < 0
    pear = between_groups(x, y, groups, method="pearson", n_boot=0)
    assert pear.r == pytest.approx(np.corrcoef(mx, my)[0, 1]) and math.isnan(pear.ci_low)
    assert between_groups(x, y, groups, n_boot=300, seed=1) == res  # seeded


def test_between_groups_needs_three_groups(caplog):
    from memlens.stats.parts import between_groups

    with caplog.at_level(logging.WARNING, logger="memlens.stats"):
        res = between_groups([1.0, 2, 3, 4], [1.0, 2, 4, 3], ["a", "a", "b", "b"], n_boot=10)
    assert math.isnan(res.r) and "needs at least 3" in caplog.text


def test_correlation_difference_uses_shared_resamples():
    from memlens.stats.parts import correlation_difference

    rng = np.random.default_rng(91)
    base = rng.normal(size=300)
    y = base + rng.normal(size=300)
    before = base + rng.normal(size=300)
    after = before + 0.8 * rng.normal(size=300) + 0.3 * (y - base)  # adds what `before` lacks
    d = correlation_difference(after, before, y, n_boot=400, seed=3)
    r1, r2 = sps.spearmanr(after, y).statistic, sps.spearmanr(before, y).statistic
    assert d["r1"] == pytest.approx(r1) and d["r2"] == pytest.approx(r2) and d["diff"] == pytest.approx(r1 - r2)
    assert d["ci_low"] < d["diff"] < d["ci_high"]
    # the interval from shared resamples is narrower than one that treats the two correlations as independent
    boot = np.random.default_rng(4)
    indep = []
    for _ in range(400):
        i, j = boot.integers(0, 300, 300), boot.integers(0, 300, 300)
        indep.append(sps.spearmanr(after[i], y[i]).statistic - sps.spearmanr(before[j], y[j]).statistic)
    lo, hi = np.percentile(indep, [2.5, 97.5])
    assert d["ci_high"] - d["ci_low"] < hi - lo
    same = correlation_difference(before, before, y, n_boot=100, seed=3)
    assert same["diff"] == 0 and same["ci_low"] == same["ci_high"] == 0 and same["p_boot"] == 1.0


def test_split_halves_matching_picks_the_analysed_scores_halves(tmp_path):
    from memlens.data.halves import load_split_halves

    rng = np.random.default_rng(92)
    n = 80
    hits = rng.uniform(0.3, 0.9, size=n)
    fas = rng.uniform(0.0, 0.4, size=n)
    ids = np.array([f"im{i}" for i in range(n)])
    h = [hits + 0.05 * rng.normal(size=(3, n)) for _ in range(2)]
    f = [fas + 0.05 * rng.normal(size=(3, n)) for _ in range(2)]
    np.savez(tmp_path / "halves.npz", image=ids, half1=h[0], half2=h[1], kind=np.array("hit rate"),
             **{"fa-corrected__half1": h[0] - f[0], "fa-corrected__half2": h[1] - f[1]})
    halves = load_split_halves(tmp_path / "halves.npz")
    assert halves.kind == "hit rate" and [a.kind for a in halves.alternatives] == ["fa-corrected"]
    corrected_score = (h[0] - f[0] + h[1] - f[1]).mean(axis=0) / 2
    best, agreement = halves.subset(list(ids[::-1])).matching(corrected_score[::-1])
    assert best.kind == "fa-corrected" and agreement == pytest.approx(1.0)
    best, agreement = halves.matching((h[0] + h[1]).mean(axis=0) / 2)
    assert best.kind == "hit rate" and agreement == pytest.approx(1.0)
    # written back with the alternatives
    np.savez(tmp_path / "again.npz", **halves.npz_arrays())
    again = load_split_halves(tmp_path / "again.npz")
    assert again.kind == "hit rate" and again.alternatives[0].kind == "fa-corrected"
    np.testing.assert_array_equal(again.alternatives[0].half2, h[1] - f[1])
