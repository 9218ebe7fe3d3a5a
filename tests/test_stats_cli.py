"""CLI: memlens stats, memlens reliability, memlens analyze."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from memlens.cli import main
from memlens.stats import correlate

SHARED = Path(__file__).resolve().parents[2] / "shared"
LNSIM_NPZ = SHARED / "data" / "lnsim-dev" / "split_halves.npz"


def _run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["-q", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def table(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 120
    cat = np.repeat(["dogs", "cars", "sky"], n // 3)
    shift = pd.Series(cat).map({"dogs": 0.0, "cars": 1.0, "sky": 2.0}).to_numpy()
    x = shift + rng.normal(size=n)
    df = pd.DataFrame({"img": [f"{i}.jpg" for i in range(n)], "cat": cat, "x": x,
                       "ctl": x + rng.normal(size=n), "y": shift + 0.3 * x + rng.normal(size=n)})
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------------------------------- stats


def test_stats_json_pooled_only(capsys, table):
    rc, out, _ = _run(capsys, "stats", table, "--x", "x", "--y", "y", "--n-boot", "200", "--format", "json")
    assert rc == 0
    data = json.loads(out)
    assert set(data) == {"pooled"}
    p = data["pooled"]
    for key in ("n", "r", "ci_low", "ci_high", "p_value", "method", "n_boot", "seed"):
        assert key in p
    df = pd.read_csv(table)
    ref = correlate(df.x, df.y, n_boot=200, seed=0)
    # full precision: the JSON reproduces the library's floats exactly
    assert (p["n"], p["r"], p["ci_low"], p["ci_high"], p["p_value"]) == (ref.n, ref.r, ref.ci_low, ref.ci_high,
                                                                         ref.p_value)
    assert p["method"] == "spearman" and p["n_boot"] == 200 and p["seed"] == 0


def test_stats_reads_semicolon_and_tab_tables_like_check(capsys, table, tmp_path):
    df = pd.read_csv(table)
    ref = _run(capsys, "stats", table, "--x", "x", "--y", "y", "--n-boot", "0", "--format", "json")[1]
    (tmp_path / "excel.csv").write_text("sep=;\n" + df.to_csv(index=False, sep=";"))
    for name, sep in (("semi.csv", ";"), ("tabs.txt", "\t"), ("excel.csv", None)):
        if sep:
            df.to_csv(tmp_path / name, index=False, sep=sep, encoding="utf-8-sig")
        rc, out, err = _run(capsys, "stats", tmp_path / name, "--x", "x", "--y", "y", "--n-boot", "0", "--format",
                            "json")
        assert rc == 0, err
        assert json.loads(out) == json.loads(ref)


def test_stats_json_groups_within_partial(capsys, table):
    rc, out, _ = _run(capsys, "stats", table, "--x", "x", "--y", "y", "--by", "cat", "--control", "ctl",
                      "--method", "pearson", "--n-boot", "100", "--seed", "3", "--ci", "bca", "--format", "json")
    assert rc == 0
    data = json.loads(out)
    assert set(data) == {"pooled", "groups", "within", "between", "partial"}
    assert data["between"]["n_groups"] == len(data["groups"]) >= 3
    assert [g["group"] for g in data["groups"]] == ["cars", "dogs", "sky"]
    assert all(g["n"] == 40 for g in data["groups"])
    assert data["within"]["n_groups"] == 3 and data["within"]["scope"] == "within"
    assert data["partial"]["control"] == "ctl"
    assert data["pooled"]["method"] == "pearson" and data["pooled"]["ci_method"] == "bca"
    assert data["pooled"]["seed"] == 3
    df = pd.read_csv(table)
    ref = correlate(df.x, df.y, method="pearson", control=df[["ctl"]], n_boot=100, seed=3, ci="bca")
    assert data["partial"]["r"] == ref.r and data["partial"]["ci_high"] == ref.ci_high


def test_stats_csv_and_text(capsys, table, tmp_path):
    rc, out, _ = _run(capsys, "stats", table, "--x", "x", "--y", "y", "--by", "cat", "--n-boot", "50",
                      "--format", "csv")
    assert rc == 0
    (tmp_path / "o.csv").write_text(out)
    got = pd.read_csv(tmp_path / "o.csv")
    assert list(got.scope) == ["pooled", "group", "group", "group", "within", "between"]
    # n_groups is a count, written 3 (not 3.0), and empty outside the within row
    assert out.splitlines()[-1].split(",")[list(got.columns).index("n_groups")] == "3"
    assert got.n_groups.isna().sum() == 4
    df = pd.read_csv(table)
    assert got.r.iloc[0] == correlate(df.x, df.y, n_boot=0).r
    rc, out, _ = _run(capsys, "stats", table, "--x", "x", "--y", "y", "--n-boot", "50")
    assert rc == 0 and "pooled" in out and "95% CI" in out
    lines = out.splitlines()
    assert lines[0] == "120 rows, spearman, 95% CI from 50 paired bootstrap resamples (percentile, seed 0)"
    assert lines[1].split()[4] == "rho" and "p_perm" not in lines[1]
    rc, out, _ = _run(capsys, "stats", table, "--x", "x", "--y", "y", "--n-boot", "0", "--method", "pearson",
                      "--permutation", "99")
    lines = out.splitlines()
    assert rc == 0 and lines[0] == "120 rows, pearson, no bootstrap (--n-boot 0), 99 permutations"
    assert lines[1].split()[4] == "r" and lines[1].split()[-1] == "p_perm"
    assert float(lines[2].split()[-1]) == pytest.approx(
        correlate(pd.read_csv(table).x, pd.read_csv(table).y, method="pearson", n_boot=0, permutation=99).p_perm,
        rel=0.01)


def test_stats_missing_column_and_non_numeric(capsys, table):
    rc, _, err = _run(capsys, "stats", table, "--x", "nope", "--y", "y")
    assert rc == 1
    assert "no column 'nope'" in err and "columns available: img, cat, x, ctl, y" in err
    assert "Traceback" not in err
    rc, _, err = _run(capsys, "stats", table, "--x", "cat", "--y", "y")
    assert rc == 1 and "column 'cat' is not numeric" in err and "e.g. 'dogs' in data row 1)" in err
    assert "decimal comma" not in err
    df = pd.read_csv(table)
    df["x"] = [f"{v:.3f}".replace(".", ",") for v in df.x]
    df.to_csv(table.parent / "comma.csv", sep=";", index=False)
    rc, _, err = _run(capsys, "stats", table.parent / "comma.csv", "--x", "x", "--y", "y")
    assert rc == 1 and err.count("\n") == 1 and "they look like numbers written with a comma (0,73 or 1,234)" in err
    rc, _, err = _run(capsys, "stats", table.parent / "absent.csv", "--x", "x", "--y", "y")
    assert rc == 1 and "absent.csv: no such table file" in err
    rc, _, err = _run(capsys, "stats", table, "--x", "x", "--y", "y", "--method", "kendall")
    assert rc == 2


# ---------------------------------------------------------------------------------------------- reliability


def _write_npz(path: Path, n_splits: int = 5, n: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true = rng.uniform(0.3, 0.9, size=n)
    h1 = true + 0.1 * rng.normal(size=(n_splits, n))
    h2 = true + 0.1 * rng.normal(size=(n_splits, n))
    np.savez(path, image=np.array([f"images/{i:04d}.jpg" for i in range(n)]), half1=h1, half2=h2)
    return h1, h2


def test_reliability_json_on_npz_and_run_folder(capsys, tmp_path):
    from scipy.stats import spearmanr

    h1, h2 = _write_npz(tmp_path / "split_halves.npz")
    rc, out, _ = _run(capsys, "reliability", tmp_path / "split_halves.npz", "--format", "json")
    assert rc == 0
    data = json.loads(out)
    want = np.mean([spearmanr(a, b).statistic for a, b in zip(h1, h2, strict=True)])
    assert data["n_images"] == 80 and data["n_splits"] == 5
    assert data["spearman_mean"] == pytest.approx(want, abs=1e-12)
    assert data["spearman_brown"] == pytest.approx(2 * want / (1 + want))
    rc, out2, _ = _run(capsys, "reliability", tmp_path, "--format", "json")  # folder holding the npz
    assert rc == 0 and json.loads(out2)["spearman_mean"] == data["spearman_mean"]
    rc, text, _ = _run(capsys, "reliability", tmp_path / "split_halves.npz")
    assert rc == 0 and "reliability of the full-group score (Spearman-Brown of that mean)" in text
    assert f"noise ceiling (the mean split-half spearman, what memlens divides by): {data['ceiling']:.4f}" in text
    (tmp_path / "scores.csv").write_text("image,score\n")  # a data table with the halves beside it
    rc, out3, _ = _run(capsys, "reliability", tmp_path / "scores.csv", "--format", "json")
    assert rc == 0 and json.loads(out3)["spearman_mean"] == data["spearman_mean"]


def test_reliability_lnsim_folder(capsys, tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    true = rng.uniform(size=50)
    (tmp_path / "Random_splits").mkdir()
    savemat(tmp_path / "Random_splits" / "subject_hrs1.mat", {"subject_hrs1": true + 0.2 * rng.normal(size=(3, 50))})
    savemat(tmp_path / "Random_splits" / "subject_hrs2.mat", {"subject_hrs2": true + 0.2 * rng.normal(size=(3, 50))})
    rc, out, _ = _run(capsys, "reliability", tmp_path, "--format", "json")
    assert rc == 0
    data = json.loads(out)
    assert data["n_images"] == 50 and data["n_splits"] == 3 and 0 < data["spearman_mean"] < 1


def test_reliability_bad_source(capsys, tmp_path):
    rc, _, err = _run(capsys, "reliability", tmp_path / "nothing.npz")
    assert rc == 1 and "no such file" in err
    rc, _, err = _run(capsys, "reliability", tmp_path)
    assert rc == 1 and "expected split_halves.npz (a data set or run folder) or Random_splits" in err
    (tmp_path / "t.csv").write_text("image,score\n")
    rc, _, err = _run(capsys, "reliability", tmp_path / "t.csv")
    assert rc == 1 and "a table without split-half scores" in err


@pytest.mark.shared
@pytest.mark.skipif(not LNSIM_NPZ.is_file(), reason=f"shared data absent: {LNSIM_NPZ}")
def test_reliability_lnsim_dev_done_when(capsys):
    rc, out, _ = _run(capsys, "reliability", LNSIM_NPZ, "--format", "json")
    assert rc == 0
    data = json.loads(out)
    assert data["n_images"] == 1974 and data["n_splits"] == 25
    assert abs(data["spearman_mean"] - 0.78) <= 0.01
    assert abs(data["spearman_brown"] - 0.87) <= 0.01


# ---------------------------------------------------------------------------------------------- analyze


def _make_run(run: Path, halves: bool = True, n: int = 90) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    cat = np.repeat(["a", "b", "c"], n // 3)
    shift = pd.Series(cat).map({"a": 0.0, "b": 1.0, "c": 2.0}).to_numpy()
    score = 0.4 + 0.1 * shift + 0.05 * rng.normal(size=n)
    recon = shift + rng.normal(size=n)
    ids = [f"images/{i:04d}.jpg" for i in range(n)]
    df = pd.DataFrame({"image_id": ids, "score": score, "category": cat, "recon_mse": recon,
                       "recon_mse_before": rng.normal(size=n), "distinctiveness": recon + rng.normal(size=n),
                       "distinctiveness_features": rng.normal(size=n), "extra": "pass-through"})
    run.mkdir()
    df.to_csv(run / "per_image.csv", index=False)
    if halves:
        order = rng.permutation(n)  # the npz may list the images in another order and hold more images
        h1 = score[None, order] + 0.05 * rng.normal(size=(4, n))
        h2 = score[None, order] + 0.05 * rng.normal(size=(4, n))
        np.savez(run / "split_halves.npz", image=np.array(ids)[order], half1=h1, half2=h2)
    return df


def df_score(run: Path) -> pd.Series:
    return pd.read_csv(run / "per_image.csv").score


def test_analyze_writes_tables(capsys, tmp_path):
    run = tmp_path / "run"
    _make_run(run)
    rc, out, err = _run(capsys, "analyze", run, "--n-boot", "100", "--seed", "2")
    assert rc == 0, err
    assert "noise ceiling" in out and "recon_mse" in out
    tab = pd.read_csv(run / "correlations.csv")
    xs = ["recon_mse", "recon_mse_before", "distinctiveness", "distinctiveness_features"]
    assert list(dict.fromkeys(tab.x)) == xs
    for x in xs:
        sub = tab[tab.x == x]
        assert list(sub.scope[:6]) == ["pooled", "group", "group", "group", "within", "between"]
    part = tab[tab.scope == "partial"]
    # the exposure test: the error after the exposure given the error before it
    assert set(part[part.x == "recon_mse"].control) == {"distinctiveness", "distinctiveness_features",
                                                        "recon_mse_before"}
    assert set(part[part.x == "distinctiveness"].control) == {"recon_mse", "recon_mse_before"}
    assert (tab.n_boot == 100).all() and (tab.seed == 2).all()
    bounded = tab.scope.isin(["pooled", "group", "within", "between"])
    assert tab[bounded].ceiling.notna().all() and tab[~bounded].ceiling.isna().all()
    assert (tab[bounded].ceiling >= tab[bounded].split_half).all()
    np.testing.assert_allclose(tab.r_over_ceiling, tab.r / tab.ceiling)
    assert tab.p_fdr.notna().all() and (tab.p_fdr >= tab.p_value).all()
    data = json.loads((run / "correlations.json").read_text())
    assert data["by"] == "category" and data["ceiling"]["n_splits"] == 4 and data["ceiling"]["n_images"] == 90
    assert len(data["rows"]) == len(tab)
    pooled = tab[(tab.x == "recon_mse") & (tab.scope == "pooled")].iloc[0]
    sh = data["ceiling"]["spearman_mean"]
    assert pooled.split_half == pytest.approx(sh)
    assert pooled.ceiling == pytest.approx(np.sqrt(2 * sh / (1 + sh))) == data["ceiling"]["ceiling"]
    # after minus before, both correlations on the same resamples
    diff = tab[tab.scope == "difference"]
    assert list(diff.x) == ["recon_mse"] and list(diff["minus"]) == ["recon_mse_before"]
    before = correlate(pd.read_csv(run / "per_image.csv").recon_mse_before, pooled_score := df_score(run),
                       n_boot=0)
    after = correlate(pd.read_csv(run / "per_image.csv").recon_mse, pooled_score, n_boot=0)
    assert diff.r.iloc[0] == pytest.approx(after.r - before.r)
    assert diff.ci_low.iloc[0] < diff.r.iloc[0] < diff.ci_high.iloc[0]
    df = pd.read_csv(run / "per_image.csv")
    ref = correlate(df.recon_mse, df.score, n_boot=100, seed=2)
    assert (pooled.r, pooled.ci_low, pooled.ci_high) == (ref.r, ref.ci_low, ref.ci_high)
    # the confound: category drives both, so the within-category effect is far weaker than the pooled one
    within = tab[(tab.x == "recon_mse") & (tab.scope == "within")].iloc[0]
    assert pooled.r > 0.5 and abs(within.r) < pooled.r - 0.3


def test_analyze_without_halves_and_groups(capsys, tmp_path):
    run = tmp_path / "run"
    _make_run(run, halves=False)
    rc, _, err = _run(capsys, "analyze", run, "--n-boot", "0", "--no-groups", "--format", "json")
    assert rc == 0, err
    tab = pd.read_csv(run / "correlations.csv")
    assert "ceiling" not in tab.columns
    assert set(tab.scope) == {"pooled", "partial", "difference"}
    assert tab.ci_low.isna().all() and tab.r.notna().all()


def test_analyze_errors(capsys, tmp_path):
    rc, _, err = _run(capsys, "analyze", tmp_path)
    assert rc == 1 and "per_image.csv: missing" in err
    run = tmp_path / "run"
    df = _make_run(run, halves=False)
    df.drop(columns="score").to_csv(run / "per_image.csv", index=False)
    rc, _, err = _run(capsys, "analyze", run)
    assert rc == 1 and "no 'score' column" in err and "Traceback" not in err
    assert not (run / "correlations.csv").exists()


def test_analyze_nan_measures_reported(capsys, tmp_path):
    run = tmp_path / "run"
    df = _make_run(run, halves=False)
    df.loc[:9, "recon_mse"] = np.nan
    df.to_csv(run / "per_image.csv", index=False)
    rc, _, err = _run(capsys, "analyze", run, "--n-boot", "0", "--no-groups")
    assert rc == 0, err
    tab = pd.read_csv(run / "correlations.csv")
    assert tab[(tab.x == "recon_mse") & (tab.scope == "pooled")].n.iloc[0] == 80
    assert not math.isnan(tab.r.iloc[0])


def test_analyze_leaves_out_the_experience_images(tmp_path):
    """Images held out as the visual-experience corpus (RUN/experience_ids.txt) are not analysed."""
    import json

    import numpy as np
    import pandas as pd

    from memlens.stats import analyze_run

    rng = np.random.default_rng(0)
    n = 60
    df = pd.DataFrame({"image_id": [f"img{i:03d}.jpg" for i in range(n)], "score": rng.uniform(0.2, 0.9, n)})
    df["recon_mse"] = df["score"] + rng.normal(0, 0.05, n)
    df.loc[:19, "recon_mse"] = -df.loc[:19, "score"]  # the held-out images behave differently
    df["distinctiveness"] = rng.normal(size=n)
    run = tmp_path / "run"
    run.mkdir()
    df.to_csv(run / "per_image.csv", index=False)
    (run / "experience_ids.txt").write_text("\n".join(df.image_id[:20]) + "\n")
    table, payload = analyze_run(run, n_boot=50)
    pooled = table[(table.x == "recon_mse") & (table.scope == "pooled")].iloc[0]
    assert pooled["n"] == 40 and pooled["r"] > 0.9
    assert json.loads((run / "correlations.json").read_text())["n_experience_excluded"] == 20


def test_stats_where_filters_rows_and_role_gets_a_note(capsys, table, tmp_path):
    df = pd.read_csv(table)
    df["role"] = ["exposed"] * (len(df) - 10) + ["experience"] * 10
    path = tmp_path / "per_image.csv"
    df.to_csv(path, index=False)
    rc, out, err = _run(capsys, "stats", path, "--x", "x", "--y", "y", "--n-boot", "0", "--format", "json")
    assert rc == 0 and f"10 of {len(df)} rows are not exposed images" in err and "--where role=exposed" in err
    assert json.loads(out)["pooled"]["n"] == len(df)
    rc, out, err = _run(capsys, "stats", path, "--x", "x", "--y", "y", "--n-boot", "0", "--format", "json",
                        "--where", "role=exposed")
    assert rc == 0 and "note" not in err
    exposed = df[df.role == "exposed"]
    assert json.loads(out)["pooled"]["r"] == correlate(exposed.x, exposed.y, n_boot=0).r
    rc, _, err = _run(capsys, "stats", path, "--x", "x", "--y", "y", "--where", "nope=1")
    assert rc == 2 and "COL one of" in err
    rc, _, err = _run(capsys, "stats", path, "--x", "x", "--y", "y", "--where", "role=none")
    assert rc == 1 and "no row has role = none" in err


def test_reliability_without_any_usable_split_is_an_error(capsys, tmp_path, caplog):
    path = tmp_path / "nan.npz"
    np.savez(path, image=np.array(list("abcd")), half1=np.full((25, 4), np.nan), half2=np.full((25, 4), np.nan))
    with caplog.at_level("WARNING", logger="memlens.stats"):
        rc, out, err = _run(capsys, "reliability", path)
    assert rc == 1 and out == ""
    assert err.strip() == (f"error: {path}: no split-half correlation could be computed (4 images, 25 splits): each "
                           "split needs at least 3 images with finite, non-constant scores in both halves")
    # one summary line per method, not one per split
    assert [r.getMessage().split(" (e.g.")[0] for r in caplog.records] == [
        "25 of 25 splits gave no spearman correlation", "25 of 25 splits gave no pearson correlation"]


def test_analyze_ceiling_is_computed_on_the_analysed_score(capsys, tmp_path, caplog):
    """Hit-rate halves beside a false-alarm corrected score: analyze picks the corrected score's halves."""
    rng = np.random.default_rng(8)
    n, k = 120, 6
    hits = rng.uniform(0.3, 0.9, size=n)
    fas = rng.uniform(0.0, 0.5, size=n)
    h = [np.clip(hits + 0.08 * rng.normal(size=(k, n)), 0, 1) for _ in range(2)]
    f = [np.clip(fas + 0.08 * rng.normal(size=(k, n)), 0, 1) for _ in range(2)]
    ids = [f"images/{i:04d}.jpg" for i in range(n)]
    corrected = ((h[0] - f[0]) + (h[1] - f[1])).mean(axis=0) / 2
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"image_id": ids, "score": corrected, "recon_mse": corrected + rng.normal(size=n)}).to_csv(
        run / "per_image.csv", index=False)
    np.savez(run / "split_halves.npz", image=np.array(ids), half1=h[0], half2=h[1], kind=np.array("hit rate"),
             **{"fa-corrected__half1": h[0] - f[0], "fa-corrected__half2": h[1] - f[1]})
    rc, out, err = _run(capsys, "analyze", run, "--n-boot", "0")
    assert rc == 0, err
    ceil = json.loads((run / "correlations.json").read_text())["ceiling"]
    assert ceil["score"] == "fa-corrected" and ceil["score_agreement"] > 0.999
    sh = np.mean([spearmanr(h[0][i] - f[0][i], h[1][i] - f[1][i]).statistic for i in range(k)])
    assert ceil["split_half"] == pytest.approx(sh)
    assert ceil["ceiling"] == pytest.approx(np.sqrt(2 * sh / (1 + sh)))
    assert "halves of the fa-corrected score" in out
    # only the hit-rate halves: the ceiling is reported, with a warning that it is another score's
    np.savez(run / "split_halves.npz", image=np.array(ids), half1=h[0], half2=h[1], kind=np.array("hit rate"))
    with caplog.at_level("WARNING"):
        rc, out, err = _run(capsys, "analyze", run, "--n-boot", "0")
    assert rc == 0
    ceil = json.loads((run / "correlations.json").read_text())["ceiling"]
    assert ceil["score"] == "hit rate" and ceil["score_agreement"] < 0.99
    assert "none of its split-half scores is the analysed score" in caplog.text + err
