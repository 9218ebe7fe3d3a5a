"""`memlens report`: one self-contained HTML file + results.json from a run directory."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from _fake_run import CATEGORIES, WEIRD_CATEGORY, WEIRD_IMAGE, make_fake_run
from memlens.report import SECTION_IDS, build_report
from memlens.report import figures as F


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """A complete fake run and its report (built once: the checks below only read it)."""
    fake = make_fake_run(tmp_path_factory.mktemp("full"), n=36)
    out = build_report(fake.run)
    page = out.read_text(encoding="utf-8")
    results = json.loads((fake.run / "results.json").read_text())
    return fake, out, page, results


def _section(page: str, sec: str) -> str:
    m = re.search(rf'<section class="card" id="{sec}">(.*?)</section>', page, re.S)
    assert m, f"section {sec} missing"
    return m.group(1)


def _minimal_run(tmp_path, n: int = 12, **dataset) -> tuple:
    run = tmp_path / "run"
    run.mkdir(parents=True)
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"image_id": [f"im{i}.jpg" for i in range(n)], "score": rng.random(n)})
    df.to_csv(run / "per_image.csv", index=False)
    if dataset:
        (run / "dataset.json").write_text(json.dumps(dataset))
    return run, df


# ------------------------------------------------------------------------------------------ the full report


def test_every_section_present_in_order(full):
    _, out, page, results = full
    assert out.name == "report.html"
    ids = re.findall(r'<section class="card" id="([a-z]+)">', page)
    assert ids == list(SECTION_IDS)
    for sec in SECTION_IDS:
        assert f'href="#{sec}"' in page
        assert sec in results
    # nothing is "not computed" when every file is there
    assert "not computed" not in page
    assert results["meta"]["problems"] == []


def test_summary_numbers_match_inputs(full):
    fake, _, page, results = full
    df = fake.per_image
    s = results["summary"]
    assert s["n_images"] == len(df)
    assert s["score"]["mean"] == pytest.approx(df["score"].mean())
    assert s["score"]["sd"] == pytest.approx(df["score"].std(ddof=1))
    assert s["categories"] == {c: int((df["category"] == c).sum()) for c in CATEGORIES}
    # the noise ceiling recomputed from the halves
    with np.load(fake.run / "split_halves.npz") as z:
        rs = [spearmanr(a, b).statistic for a, b in zip(z["half1"], z["half2"], strict=True)]
    ceil = s["noise_ceiling"]
    assert ceil["n_splits"] == 5
    assert ceil["split_half_spearman"] == pytest.approx(np.mean(rs))
    assert ceil["spearman_brown"] == pytest.approx(2 * np.mean(rs) / (1 + np.mean(rs)))
    summary = _section(page, "summary")
    assert f"{ceil['spearman_brown']:.3f}" in summary
    assert f"{df['score'].mean():.3f}" in summary


def test_correlations_come_from_the_analyze_table(full):
    fake, _, page, results = full
    corr = pd.read_csv(fake.run / "correlations.csv").fillna("")
    rec = results["reconstruction"]
    assert rec["primary"] == "recon_mse"  # the training loss of config.json
    row = corr[(corr.x == "recon_mse") & (corr.scope == "pooled")].iloc[0]
    pooled = rec["measures"]["recon_mse"]["pooled"]
    assert pooled["r"] == pytest.approx(row.r) and pooled["ci_low"] == pytest.approx(row.ci_low)
    assert pooled["source"] == "correlations.csv"
    for cat in CATEGORIES:
        g = corr[(corr.x == "recon_mse") & (corr.scope == "group") & (corr.group == cat)].iloc[0]
        assert rec["measures"]["recon_mse"]["by_category"][cat]["r"] == pytest.approx(g.r)
    within = corr[(corr.x == "recon_mse") & (corr.scope == "within")].iloc[0]
    assert rec["measures"]["recon_mse"]["within"]["r"] == pytest.approx(within.r)
    # every recon_* column is listed, and the shown value is the table's
    assert set(rec["measures"]) == {c for c in fake.per_image.columns if c.startswith("recon_")}
    assert f"{row.r:.3f}" in _section(page, "reconstruction")
    dist = results["distinctiveness"]["measures"]["distinctiveness"]
    part = corr[(corr.x == "distinctiveness") & (corr.scope == "partial")].iloc[0]
    assert dist["partial"]["r"] == pytest.approx(part.r) and dist["partial"]["control"] == "recon_mse"
    # the table section holds every row of the file
    assert len(results["correlations"]["rows"]) == len(corr)
    assert _section(page, "correlations").count("<tr>") == len(corr) + 1


def test_binned_means_match_the_data(full):
    fake, _, _, results = full
    df = fake.per_image
    bins = results["reconstruction"]["measures"]["recon_mse"]["binned_means"]
    assert sum(b["n"] for b in bins) == len(df)
    lowest = df.nsmallest(bins[0]["n"], "recon_mse")
    assert bins[0]["y_mean"] == pytest.approx(lowest["score"].mean())
    assert bins[0]["x_high"] <= bins[-1]["x_low"]


def test_predictor_descriptors_training_galleries(full):
    fake, _, page, results = full
    cv = pd.read_csv(fake.run / "predictor_cv.csv")
    for model in ("mlp", "ridge"):
        got = results["predictor"]["models"][model]
        assert got["n_folds"] == 5
        assert got["spearman_mean"] == pytest.approx(cv[cv.model == model].spearman.mean())
        assert got["spearman_sd"] == pytest.approx(cv[cv.model == model].spearman.std(ddof=1))
    assert results["predictor"]["ceiling"] == pytest.approx(results["summary"]["noise_ceiling"]["spearman_brown"])
    assert f"{cv[cv.model == 'mlp'].spearman.mean():.3f}" in _section(page, "predictor")

    dc = pd.read_csv(fake.run / "descriptor_correlations.csv")
    got = {r["descriptor"]: r["r"] for r in results["descriptors"]["rows"]}
    assert got == pytest.approx(dict(zip(dc.descriptor, dc.r, strict=True)))

    curve = results["training"]["curve"]
    assert curve["pretrain"]["final_loss"] == pytest.approx(0.045)
    assert curve["pretrain"]["final_val_loss"] == pytest.approx(0.055)
    assert results["training"]["exposure"]["n_images"] == len(fake.per_image)

    df = fake.per_image
    top = results["galleries"]["human_top"]
    assert [t["image_id"] for t in top] == list(df.nlargest(len(top), "score").image_id)
    assert top[0]["image_id"] == WEIRD_IMAGE
    bottom_pred = results["galleries"]["predicted_bottom"]
    assert [t["image_id"] for t in bottom_pred] == list(df.nsmallest(len(bottom_pred), "predicted_score").image_id)
    # thumbnails are inline JPEGs
    galleries = _section(page, "galleries")
    assert galleries.count('src="data:image/jpeg;base64,') == sum(len(v) for v in results["galleries"].values())

    ex = results["explanations"]
    assert ex["aggregates"] == ["aggregate_least_memorable.png", "aggregate_most_memorable.png"]
    assert ex["overlays_total"] == 5 and ex["arrays"] == {"maps": [5, 8, 8]}
    assert ex["sanity"]["passed"] is True

    methods = results["methods"]
    assert methods["manifest"]["timings"]["train"] == 12.5
    assert methods["config"]["train"]["seed"] == 3
    sec = _section(page, "methods")
    for text in ("2.13.0", "sha256:0123456789abcdef", "12.50", "cpu"):
        assert text in sec


def test_names_and_values_are_escaped(full):
    _, _, page, _ = full
    assert "<b>x</b>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;.png" in page
    assert "<games>" not in page
    assert html_escape(WEIRD_CATEGORY) in page
    assert "overlay_a&amp;b.png" in page and "overlay_a&b.png" not in page


def html_escape(s: str) -> str:
    import html

    return html.escape(s, quote=True)


def test_self_contained(full):
    _, _, page, _ = full
    assert "http://" not in page and "https://" not in page
    refs = re.findall(r'\b(?:src|href)\s*=\s*["\']?([^"\'\s>]*)', page, re.I)
    assert refs, "no images or links at all?"
    bad = [r for r in refs if not (r.startswith("data:") or r.startswith("#"))]
    assert bad == []
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    assert "@import" not in page and "url(" not in page
    assert "default-src 'none'" in page  # the CSP forbids any request even if something slipped through


# ------------------------------------------------------------------------------------------ degraded inputs


def test_missing_files_degrade_gracefully(tmp_path):
    run, df = _minimal_run(tmp_path)
    out = build_report(run)
    page = out.read_text()
    results = json.loads((run / "results.json").read_text())
    assert re.findall(r'<section class="card" id="([a-z]+)">', page) == list(SECTION_IDS)
    for command in ("memlens train", "memlens score", "memlens analyze", "memlens fit-predictor", "memlens explain"):
        assert f"<code>{command}</code>" in page, command
    assert "noise ceiling: not available" in page.lower()
    assert "Thumbnails omitted" in page
    assert results["summary"]["n_images"] == len(df)
    assert results["predictor"] == {} and results["correlations"] == {}

    empty = tmp_path / "empty"
    empty.mkdir()
    page = build_report(empty).read_text()
    assert page.count("not computed") >= 8


def test_correlations_computed_when_analyze_did_not_run(tmp_path):
    fake = make_fake_run(tmp_path, n=30)
    for name in ("correlations.csv", "correlations.json", "descriptor_correlations.csv"):
        (fake.run / name).unlink()
    df = fake.per_image[["image_id", "score", "category", "recon_mse"]]
    df.to_csv(fake.run / "per_image.csv", index=False)
    build_report(fake.run)
    results = json.loads((fake.run / "results.json").read_text())
    pooled = results["reconstruction"]["measures"]["recon_mse"]["pooled"]
    assert pooled["r"] == pytest.approx(spearmanr(df.recon_mse, df.score).statistic)
    assert pooled["ci_low"] < pooled["r"] < pooled["ci_high"]
    assert pooled["source"].startswith("report")
    # descriptors: correlations computed from descriptors.csv
    desc = pd.read_csv(fake.run / "descriptors.csv").merge(df[["image_id", "score"]], on="image_id")
    got = {r["descriptor"]: r["r"] for r in results["descriptors"]["rows"]}
    assert got["colorfulness"] == pytest.approx(spearmanr(desc.colorfulness, desc.score).statistic)
    assert results["correlations"] == {} and results["distinctiveness"] == {}


def test_unreadable_file_is_reported_not_fatal(tmp_path):
    run, _ = _minimal_run(tmp_path)
    (run / "correlations.csv").write_text("")
    (run / "manifest.json").write_text("{not json")
    page = build_report(run).read_text()
    results = json.loads((run / "results.json").read_text())
    assert "Some files could not be used" in page
    assert any(p.startswith("correlations.csv") for p in results["meta"]["problems"])
    assert any(p.startswith("manifest.json") for p in results["meta"]["problems"])


def test_images_missing_on_disk(tmp_path):
    fake = make_fake_run(tmp_path, n=12)
    shutil.rmtree(fake.data / "animal")
    for name in ("correlations.csv", "correlations.json"):
        (fake.run / name).unlink()
    fake.per_image[["image_id", "score", "category", "predicted_score"]].to_csv(fake.run / "per_image.csv", index=False)
    page = build_report(fake.run).read_text()
    gal = _section(page, "galleries")
    assert "image not found" in gal and "data:image/jpeg" in gal


# ------------------------------------------------------------------------------------------ simulated banner


def test_simulated_banner(tmp_path):
    run, _ = _minimal_run(tmp_path / "a", simulated=True)
    page = build_report(run).read_text()
    assert "Simulated scores" in page
    assert json.loads((run / "results.json").read_text())["meta"]["simulated"] is True

    data = tmp_path / "demo"
    data.mkdir()
    (data / "demo_truth.csv").write_text("image_id,truth\n")
    run, _ = _minimal_run(tmp_path / "b", root=str(data), layout="memcat")
    assert "Simulated scores" in build_report(run).read_text()

    run, _ = _minimal_run(tmp_path / "c", root=str(tmp_path), layout="memcat")
    assert "Simulated scores" not in build_report(run).read_text()


# ------------------------------------------------------------------------------------------ writing, CLI


def test_written_atomically(tmp_path, monkeypatch):
    run, _ = _minimal_run(tmp_path)
    out = run / "report.html"
    out.write_text("OLD")
    import memlens._io

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(memlens._io.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        build_report(run)
    assert out.read_text() == "OLD"
    assert sorted(p.name for p in run.iterdir()) == ["per_image.csv", "report.html"]


def test_cli(tmp_path, capsys):
    from memlens.cli import main

    run, _ = _minimal_run(tmp_path)
    out = tmp_path / "elsewhere" / "my report.html"
    assert main(["report", str(run), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.is_file() and (out.parent / "results.json").is_file()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file()

    assert main(["report", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope" in err


# ------------------------------------------------------------------------------------------ figures


def test_lowess_and_binned_means():
    rng = np.random.default_rng(0)
    x = rng.exponential(size=400)  # skewed, as reconstruction errors are
    y = 2 * x + rng.normal(scale=0.1, size=400)
    gx, gy = F.lowess(x, y)
    assert gx.size == 40 and np.all(np.diff(gx) >= 0)
    assert np.max(np.abs(gy - 2 * gx)) < 0.1  # a linear relation is recovered, even in the sparse tail
    # on pure noise the curve stays flat-ish (no wiggles where the skewed x values pile up)
    xs, ys = rng.exponential(size=20) ** 2, rng.random(20)
    assert np.abs(np.diff(F.lowess(xs, ys)[1])).sum() < 1.0
    bins = F.binned_means(x, y, 8)
    assert len(bins) == 8 and sum(b["n"] for b in bins) == 400
    assert all(b["y_ci_low"] < b["y_mean"] < b["y_ci_high"] for b in bins)
    assert F.lowess([1, 2], [3, 4])[0].size == 0
    assert F.binned_means([], []) == []


def test_figures_use_agg_and_no_pyplot():
    import sys

    rng = np.random.default_rng(0)
    figs = [
        F.score_histogram(rng.random(50)),
        F.training_curve(pd.DataFrame({"epoch": [1, 2], "loss": [1.0, 0.5]}), None),
        F.measure_scatter(rng.random(30), rng.random(30), xlabel="a $weird$ label", r=0.1, ci=(0.0, 0.2)),
        F.category_scatter([{"name": "a", "x": rng.random(9), "y": rng.random(9)}], xlabel="x"),
        F.binned_means_plot(F.binned_means(rng.random(30), rng.random(30)), xlabel="x"),
        F.predictor_bars({"mlp": [0.5, 0.6], "ridge": [0.4]}, consistency=0.6, ceiling=0.75),
        F.correlation_forest(["a", "b"], [0.2, -0.1], [0.1, -0.2], [0.3, 0.0], ceiling=0.7),
    ]
    for fig in figs:
        assert type(fig.canvas).__name__ == "FigureCanvasAgg"
        assert F.figure_to_png(fig)[:4] == b"\x89PNG"
    assert "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()
