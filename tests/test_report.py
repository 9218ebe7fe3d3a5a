"""`memlens report`: one self-contained HTML file + results.json from a run directory."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from _fake_run import CATEGORIES, WEIRD_CATEGORY, WEIRD_IMAGE, make_fake_run, real_run
from memlens.errors import RunDirError
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
    # the noise ceiling is analyze's (correlations.json), and it is the split-half correlation of the halves
    with np.load(fake.run / "split_halves.npz") as z:
        rs = [spearmanr(a, b).statistic for a, b in zip(z["half1"], z["half2"], strict=True)]
    ceil = s["noise_ceiling"]
    analyzed = json.loads((fake.run / "correlations.json").read_text())["ceiling"]
    assert ceil["source"].startswith("correlations.json")
    assert ceil["n_splits"] == 5
    assert ceil["split_half_spearman"] == pytest.approx(analyzed["spearman_mean"])
    assert ceil["split_half_spearman"] == pytest.approx(np.mean(rs))
    assert ceil["spearman_brown"] == pytest.approx(2 * np.mean(rs) / (1 + np.mean(rs)))
    summary = _section(page, "summary")
    assert f"{ceil['spearman_brown']:.3f}" in summary
    assert f"{df['score'].mean():.3f}" in summary
    assert "false-alarm corrected" in summary  # dataset.json's notes


def test_correlations_come_from_the_analyze_table(full):
    fake, _, page, results = full
    corr = pd.read_csv(fake.run / "correlations.csv", dtype={"group": str, "control": str}).fillna(
        {"group": "", "control": ""})
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
    part = corr[(corr.x == "distinctiveness") & (corr.scope == "partial")]
    assert [p["control"] for p in dist["partial"]] == list(part.control)  # every control: all recon_* columns
    assert [p["r"] for p in dist["partial"]] == pytest.approx(list(part.r))
    # the table section holds every row of the file
    assert len(results["correlations"]["rows"]) == len(corr)
    sec = _section(page, "correlations")
    assert sec.count("<tr") == len(corr) + 1
    assert "p (FDR)" in sec and f"testing all {len(corr)} rows" in sec


def test_binned_means_match_the_data(full):
    fake, _, _, results = full
    df = fake.per_image
    bins = results["reconstruction"]["measures"]["recon_mse"]["binned_means"]
    assert sum(b["n"] for b in bins) == len(df)
    lowest = df.nsmallest(bins[0]["n"], "recon_mse")
    assert bins[0]["y_mean"] == pytest.approx(lowest["score"].mean())
    assert bins[0]["x_high"] <= bins[-1]["x_low"]


def test_predictor_section_reads_fit_predictor_files(full):
    fake, _, page, results = full
    cv = pd.read_csv(fake.run / "predictor_cv.csv")
    folds, means = cv[cv.fold.astype(str) != "mean"], cv[cv.fold.astype(str) == "mean"]
    pred = results["predictor"]
    assert pred["inputs"] == "features" and pred["split"] == "kfold"
    for model in ("mlp", "ridge"):
        got = pred["models"][model]
        assert got["n_folds"] == 5  # the mean rows are not folds
        f = folds[folds.model == model]
        assert got["spearman_mean"] == pytest.approx(f.spearman.mean())
        assert got["spearman_mean"] == pytest.approx(means[means.model == model].spearman.iloc[0])
        assert got["spearman_sd"] == pytest.approx(f.spearman.std(ddof=1))
        assert got["auc_mean"] == pytest.approx(f.auc.mean())
        assert "epochs_mean" not in got and "seconds_mean" not in got  # settings are not metrics
    # the ceiling divided by is sqrt of the Spearman-Brown reliability, not the split-half consistency
    assert pred["consistency"] == pytest.approx(0.62) and pred["spearman_brown"] == pytest.approx(0.765)
    assert pred["ceiling"] == pytest.approx(0.765 ** 0.5)
    assert pred["models"]["ridge"]["spearman_over_ceiling"] == pytest.approx(
        pred["models"]["ridge"]["spearman_mean"] / 0.765 ** 0.5)
    oof = pd.read_csv(fake.run / "predictor_oof.csv")
    assert pred["oof"]["mlp"]["r"] == pytest.approx(spearmanr(oof.predicted_mlp, oof.score).statistic)
    sec = _section(page, "predictor")
    assert f"{folds[folds.model == 'mlp'].spearman.mean():.3f}" in sec
    assert results["headline"]["predictor rho (cross-validated)"] == pytest.approx(
        pred["models"]["mlp"]["spearman_mean"], abs=5e-4)


def test_descriptors_show_both_targets(full):
    from memlens.descriptors import DESCRIPTOR_COLUMNS

    fake, _, page, results = full
    dc = pd.read_csv(fake.run / "descriptor_correlations.csv")
    d = results["descriptors"]
    assert d["targets"] == ["score", "predicted_score"]
    assert {r["descriptor"] for r in d["rows"]} == set(DESCRIPTOR_COLUMNS)
    for r in d["rows"]:
        for t in ("score", "predicted_score"):
            row = dc[(dc.descriptor == r["descriptor"]) & (dc.target == t)].iloc[0]
            assert r[t]["r"] == pytest.approx(row.r) and r[t]["ci_high"] == pytest.approx(row.ci_high)
    sec = _section(page, "descriptors")
    assert "ρ with predicted score" in sec and "ρ with human score" in sec
    assert "colourfulness (Hasler" in sec  # what each descriptor measures
    # one family of tests: p and Benjamini-Hochberg p over every descriptor x target correlation
    from memlens.stats import fdr_bh

    q = fdr_bh(dc.p_value.to_numpy())
    got = {(r["descriptor"], t): r[t]["p_fdr"] for r in d["rows"] for t in ("score", "predicted_score")}
    assert [got[(a, b)] for a, b in zip(dc.descriptor, dc.target, strict=True)] == pytest.approx(q)
    assert f"adjusted over the {len(dc)} correlations" in sec and sec.count("p (FDR)") == 3  # 2 headers + note


def test_training_caution_for_an_untrained_scratch_model(tmp_path):
    from memlens.train import MIN_SCRATCH_EXPERIENCE_STEPS, experience_caution

    fake = make_fake_run(tmp_path, n=24)
    path = fake.run / "manifest.json"
    man = json.loads(path.read_text())

    def caution(steps: int, init: str = "scratch") -> str | None:
        man["training"]["experience"]["steps"] = steps
        man["model"]["init"] = init
        path.write_text(json.dumps(man))
        build_report(fake.run)
        return json.loads((fake.run / "results.json").read_text())["training"].get("caution")

    text = caution(10)  # the fake curve's validation loss: 0.1 -> 0.055
    assert text == experience_caution("scratch", {"steps": 10, "n_images": 20}, [0.1, 0.07, 0.06, 0.055])
    assert "10 optimiser steps of visual experience on 20 images; its validation loss fell only from 0.1 to 0.055" in text
    # a validation loss that fell to under half: the model learned to reconstruct unseen images, no caution
    assert experience_caution("scratch", {"steps": 10, "n_images": 20}, [0.1, 0.07, 0.06, 0.049]) is None
    assert "fell only" not in experience_caution("scratch", {"steps": 10, "n_images": 20})  # not measured
    assert "Caution: the autoencoder started from random weights" in _section(
        (fake.run / "report.html").read_text(encoding="utf-8"), "training")
    assert caution(MIN_SCRATCH_EXPERIENCE_STEPS) is None  # enough steps
    assert caution(10, init="imagenet") is None  # pretrained: a short experience is the paper's setting
    assert "no visual experience" in experience_caution("scratch", {"source": "none"})


def test_a_failed_sanity_check_is_said_before_the_maps(tmp_path):
    fake = make_fake_run(tmp_path, n=24)
    path = fake.run / "attributions" / "sanity.json"
    sanity = json.loads(path.read_text())
    sec = _section(build_report(fake.run).read_text(encoding="utf-8"), "explanations")
    assert sanity["passed"] and "Read these maps with caution" not in sec
    path.write_text(json.dumps({**sanity, "passed": False, "mean_spearman": 0.71}))
    sec = _section(build_report(fake.run).read_text(encoding="utf-8"), "explanations")
    i = sec.find("Read these maps with caution: the randomisation check below failed (mean Spearman 0.71")
    assert i != -1 and i < sec.find("<img")


def test_correlation_cells_fixed_decimals_ceiling_and_permutation(tmp_path):
    """rho with three decimals (never 7.00e-04, never -0.000), each row's ceiling, and p_perm when it was run."""
    from memlens.stats import analyze_run

    fake = make_fake_run(tmp_path, n=36)
    analyze_run(fake.run, n_boot=50, permutation=20)
    corr = pd.read_csv(fake.run / "correlations.csv")
    corr.loc[0, "r"], corr.loc[1, "r"] = 7e-4, -2e-5
    corr.to_csv(fake.run / "correlations.csv", index=False)
    sec = _section(build_report(fake.run).read_text(encoding="utf-8"), "correlations")
    cells = re.findall(r'<td class="num">([^<]*)</td>', sec)
    assert "0.001" in cells and "0.000" in cells and not any("e-" in c or c == "-0.000" for c in cells)
    assert "p (permutation)" in sec and "noise ceiling</th>" in sec
    group = corr[(corr.scope == "group")].iloc[0]
    assert f"{group.ceiling:.3f}" in sec  # a group row shows its own group's ceiling


def test_training_galleries_explanations_methods(full):
    fake, _, page, results = full
    tr = results["training"]
    assert tr["curve"]["experience"] == {"epochs": 4, "first_loss": pytest.approx(0.09),
                                         "final_loss": pytest.approx(0.045), "final_val_loss": pytest.approx(0.055)}
    assert "exposure" not in tr["curve"]  # per-image exposure rows are the exposure panel, not an epoch curve
    exposure = pd.read_csv(fake.run / "exposure.csv")
    assert tr["exposure"]["n_images"] == len(exposure)
    assert tr["exposure"]["mean_loss"] == pytest.approx(exposure.loss.mean())
    assert tr["settings"]["autoencoder"] == "small" and tr["settings"]["exposure learning rate"] == 1e-5

    # galleries: predicted scores are fit-predictor's out-of-fold ones
    g = results["galleries"]
    oof = pd.read_csv(fake.run / "predictor_oof.csv")
    assert g["predicted_source"].startswith("predictor_oof.csv")
    df = fake.per_image
    top = g["human_top"]
    assert [t["image_id"] for t in top] == list(df.nlargest(len(top), "score").image_id)
    assert top[0]["image_id"] == WEIRD_IMAGE
    bottom = oof.nsmallest(len(g["predicted_bottom"]), "predicted_mlp")
    assert [t["image_id"] for t in g["predicted_bottom"]] == list(bottom.image_id)
    assert [t["predicted_score"] for t in g["predicted_bottom"]] == pytest.approx(list(bottom.predicted_mlp))
    galleries = _section(page, "galleries")
    assert galleries.count('src="data:image/jpeg;base64,') == sum(len(v) for v in g.values() if isinstance(v, list))

    ex = results["explanations"]
    assert ex["aggregates"] == ["aggregate_quartiles.png", "aggregate_most_memorable.png",
                                "aggregate_least_memorable.png", "aggregate_difference.png"]
    explain = json.loads((fake.run / "attributions" / "explain.json").read_text())
    assert [(o["group"], o["rank"], o["image_id"]) for o in ex["overlays"]] == [
        (grp, k, e["image_id"]) for grp in ("top", "bottom", "image") for k, e in enumerate(explain["explained"][grp], 1)]
    assert ex["overlays"][0]["image_id"] == WEIRD_IMAGE and ex["overlays_total"] == 5
    assert ex["sanity"]["passed"] is True and ex["sanity"]["mean_spearman"] == 0.12
    assert set(ex["arrays"]) >= {"maps", "image_ids"}
    sec = _section(page, "explanations")
    assert "#1 most memorable" in sec and "#2 least memorable" in sec and "Requested images" in sec
    assert "2 of 5 maps did not converge" in sec
    assert sec.count("<img") == 5 + 1  # overlays + the quartile figure (it holds the three single maps)

    methods = results["methods"]
    assert methods["manifest"]["timings"]["experience_s"] == 12.5
    assert methods["config"]["seed"] == 3 and methods["config"]["score"]["metrics"] == ["mse", "dssim"]
    assert methods["seeds"]["train"] == 3 and methods["seeds"]["explain"] == 0
    assert methods["stage_seconds"]["explain"] == 1.5
    assert any(c.startswith("memlens fit-predictor ") for c in methods["commands"])
    sec = _section(page, "methods")
    for text in ("2.13.0", "0123456789abcdef", "12.50", "cpu", "memlens analyze"):
        assert text in sec


def test_names_and_values_are_escaped(full):
    _, _, page, _ = full
    assert "<b>x</b>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;.png" in page
    assert "<games>" not in page
    assert html_escape(WEIRD_CATEGORY) in page
    # the weird name is the most memorable image: its overlay caption escapes it too
    assert f'<span class="s">{html_escape(WEIRD_IMAGE)}</span>' in _section(page, "explanations")


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


def test_predictor_ceiling_of_older_runs(tmp_path):
    """predictor_cv.csv files written before the rename call the Spearman-Brown column noise_ceiling."""
    fake = make_fake_run(tmp_path, n=20)
    cv = pd.read_csv(fake.run / "predictor_cv.csv").rename(columns={"spearman_brown": "noise_ceiling"})
    cv.to_csv(fake.run / "predictor_cv.csv", index=False)
    build_report(fake.run)
    pred = json.loads((fake.run / "results.json").read_text())["predictor"]
    assert pred["consistency"] == pytest.approx(0.62) and pred["spearman_brown"] == pytest.approx(0.765)


def test_summary_counts_exposed_and_experience_images(tmp_path):
    run, df = _minimal_run(tmp_path, n=12)
    df["role"] = ["exposed"] * 8 + ["experience"] * 3 + ["not exposed"]
    df["category"] = ["a", "b", None, "a", "b", "a", None, "b", "a", "b", "a", "b"]
    df.to_csv(run / "per_image.csv", index=False)
    build_report(run)
    results = json.loads((run / "results.json").read_text())
    assert results["summary"]["roles"] == {"exposed": 8, "experience": 3, "not exposed": 1}
    sec = _section((run / "report.html").read_text(encoding="utf-8"), "summary")
    assert "exposed once" in sec and "visual experience (not analysed)" in sec
    assert results["summary"]["categories"] == {"a": 5, "b": 5} and results["summary"]["n_without_category"] == 2
    assert "2 images have no category" in sec
    # the predictor section says which images it predicted: every scored one, the experience images included
    pd.DataFrame({"fold": [0, 1, 2, "mean"], "model": "svr", "n_test": [4, 4, 4, 12],
                  "spearman": [0.1, 0.2, 0.3, 0.2]}).to_csv(run / "predictor_cv.csv", index=False)
    build_report(run)
    sec = _section((run / "report.html").read_text(encoding="utf-8"), "predictor")
    assert "Images predicted: 12, each by a model that did not see it in training, drawn from every scored image, " \
           "the 3 visual-experience images included" in sec


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

    assert page.count("not computed") >= 5  # every later stage's section says which command makes it
    empty = tmp_path / "empty"  # a folder with no run file at all is not a run: refused, nothing written
    empty.mkdir()
    with pytest.raises(RunDirError, match="not a memlens run directory"):
        build_report(empty)
    assert not any(empty.iterdir())


def test_correlations_computed_when_analyze_did_not_run(tmp_path):
    from memlens.stats import correlate

    fake = make_fake_run(tmp_path, n=30)
    for name in ("correlations.csv", "correlations.json", "descriptor_correlations.csv"):
        (fake.run / name).unlink()
    df = fake.per_image[["image_id", "score", "category", "recon_mse"]]
    df.to_csv(fake.run / "per_image.csv", index=False)
    build_report(fake.run)
    results = json.loads((fake.run / "results.json").read_text())
    rec = results["reconstruction"]["measures"]["recon_mse"]
    pooled = rec["pooled"]
    assert pooled["r"] == pytest.approx(spearmanr(df.recon_mse, df.score).statistic)
    # the project's one implementation of the statistics, seeded: the same interval as memlens.stats gives
    ref = correlate(df.recon_mse, df.score, n_boot=1000, seed=0)
    assert (pooled["ci_low"], pooled["ci_high"]) == pytest.approx((ref.ci_low, ref.ci_high))
    assert pooled["source"].startswith("report (memlens.stats.correlate")
    within = correlate(df.recon_mse, df.score, n_boot=1000, seed=0, groups=df.category)
    assert rec["within"]["r"] == pytest.approx(within.r)
    # descriptors: correlations computed from descriptors.csv, for the human and the predicted score
    desc = pd.read_csv(fake.run / "descriptors.csv")
    got = {r["descriptor"]: r for r in results["descriptors"]["rows"]}
    assert results["descriptors"]["source"].startswith("descriptors.csv")
    assert got["colourfulness"]["score"]["r"] == pytest.approx(spearmanr(desc.colourfulness, desc.score).statistic)
    assert got["edge_density"]["predicted_score"]["r"] == pytest.approx(
        spearmanr(desc.edge_density, desc.predicted_score).statistic)
    assert results["correlations"] == {} and results["distinctiveness"] == {}
    # the noise ceiling: memlens.stats.split_half_reliability on the run's halves
    from memlens.data.halves import load_split_halves
    from memlens.stats import split_half_reliability

    ceil = results["summary"]["noise_ceiling"]
    rel = split_half_reliability(load_split_halves(fake.run / "split_halves.npz"))
    assert ceil["split_half_spearman"] == pytest.approx(rel["spearman_mean"])
    assert ceil["spearman_brown"] == pytest.approx(rel["spearman_brown"])
    assert "split_half_reliability" in ceil["source"]


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
    fake.per_image[["image_id", "score", "category"]].to_csv(fake.run / "per_image.csv", index=False)
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


def test_approximate_scoring_arithmetic_is_stated(tmp_path):
    fake = make_fake_run(tmp_path, n=12)
    config = json.loads((fake.run / "config.json").read_text())
    build_report(fake.run)
    assert "scoring arithmetic" not in json.loads((fake.run / "results.json").read_text())["training"]["settings"]
    config.setdefault("score", {}).update(precision="int8", int8={"calibration_images": 8,
                                                                  "calibration_max_rel_mse": 0.0123})
    (fake.run / "config.json").write_text(json.dumps(config))
    page = build_report(fake.run).read_text()
    row = json.loads((fake.run / "results.json").read_text())["training"]["settings"]["scoring arithmetic"]
    assert row.startswith("int8 (approximate: calibrated on 8 images") and "1.2 %" in row
    assert "scoring arithmetic" in _section(page, "training")


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

    (tmp_path / "photos").mkdir()  # a folder that is not a run: refused, and nothing is written into it
    assert main(["report", str(tmp_path / "photos")]) == 1
    assert "not a memlens run directory" in capsys.readouterr().err and not any((tmp_path / "photos").iterdir())
    assert main(["report", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
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


def test_figure_labels_no_negative_zero_and_ticks_on_every_panel():
    assert F.signed(-0.0004) == "0.00" and F.signed(-0.004) == "0.00" and F.signed(-0.006) == "-0.01"
    assert F.signed(0.4567, 3) == "0.457"
    assert F._corr_title(-0.001, (-0.2, 0.001), 40) == "Spearman ρ = 0.00 [-0.20, 0.00], n = 40"
    rng = np.random.default_rng(0)
    panels = [{"name": f"c{i}", "x": rng.random(25), "y": rng.random(25), "r": -0.001} for i in range(5)]
    fig = F.category_scatter(panels, xlabel="x")
    F.figure_to_png(fig)  # draws
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 5 and all("-0.00" not in ax.get_title() for ax in axes)
    # 4 panels in the first row, one below: the three above the empty slots keep their x tick labels
    for ax in axes:
        assert any(t.get_visible() and t.get_text() for t in ax.get_xticklabels()), ax.get_title()


def test_figures_use_agg_and_no_pyplot():
    import sys

    rng = np.random.default_rng(0)
    figs = [
        F.score_histogram(rng.random(50)),
        F.training_curve(pd.DataFrame({"epoch": [1, 2], "loss": [1.0, 0.5]}), None),
        F.measure_scatter(rng.random(30), rng.random(30), xlabel="a $weird$ label", r=0.1, ci=(0.0, 0.2)),
        F.category_scatter([{"name": "a", "x": rng.random(9), "y": rng.random(9)}], xlabel="x"),
        F.binned_means_plot(F.binned_means(rng.random(30), rng.random(30)), xlabel="x"),
        F.predictor_bars({"mlp": [0.5, 0.6], "ridge": [0.4]}, consistency=0.6, ceiling=0.87),
        F.correlation_forest(["a", "b"], [0.2, -0.1], [0.1, -0.2], [0.3, 0.0], ceiling=0.7),
    ]
    for fig in figs:
        assert type(fig.canvas).__name__ == "FigureCanvasAgg"
        assert F.figure_to_png(fig)[:4] == b"\x89PNG"
    assert "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()


# ------------------------------------------------------------------------------------------ a real run


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """`memlens run` on a 40-image demo set with tiny settings (shared with the browser test in-process)."""
    r = real_run(tmp_path_factory)
    page = (r.run / "report.html").read_text(encoding="utf-8")
    results = json.loads((r.run / "results.json").read_text())
    return r, page, results


def test_real_run_report_has_every_section_filled(real):
    r, page, results = real
    assert re.findall(r'<section class="card" id="([a-z]+)">', page) == list(SECTION_IDS)
    assert "not computed" not in page, re.findall(r"[^>]*not computed[^<]*", page)
    assert results["meta"]["problems"] == [] and "could not be used" not in page
    # the demo's scores are simulated: dataset.json points at the demo root (demo_truth.csv, README.txt)
    assert (r.data / "demo_truth.csv").is_file() and results["meta"]["simulated"] is True
    assert "Simulated scores" in page
    for sec in SECTION_IDS:
        assert results[sec], f"section {sec} has no numbers"
    for sec, needle in (("summary", "noise ceiling"), ("training", "Single exposure"),
                        ("reconstruction", "Per category"), ("distinctiveness", "partial"),
                        ("correlations", "within"), ("predictor", "ridge"), ("galleries", "Least memorable (predicted)"),
                        ("explanations", "#1 most memorable"), ("descriptors", "ρ with predicted score"),
                        ("methods", "memlens fit-predictor")):
        assert needle in _section(page, sec), (sec, needle)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    ceiling_key = "noise ceiling (sqrt of the Spearman-Brown split-half reliability)"
    assert set(results["headline"]) >= {"images", ceiling_key, "rho(recon_mse, score) within category",
                                        "predictor rho (nested cross-validation, unseen images)"}
    # with categories the headline is the within-category rho (the pooled one mixes in the category means)
    corr = pd.read_csv(r.run / "correlations.csv")
    within = corr[(corr.x == "recon_mse") & (corr.scope == "within")].r.iloc[0]
    assert results["headline"]["rho(recon_mse, score) within category"] == pytest.approx(within, abs=5e-4)
    assert results["reconstruction"]["headline_scope"] == "within category"
    est = results["predictor"]["estimate"]  # the honest figure: the pooled outer-fold predictions' Spearman
    assert results["headline"]["predictor rho (nested cross-validation, unseen images)"] == pytest.approx(
        est["spearman"], abs=5e-4)
    sb = results["summary"]["noise_ceiling"]["spearman_brown"]
    assert results["headline"][ceiling_key] == pytest.approx(sb ** 0.5, abs=5e-4)
    assert sb == pytest.approx(2 * (sh := results["summary"]["noise_ceiling"]["split_half_spearman"]) / (1 + sh))
    assert "report: " in r.output  # memlens run printed where the report is


def test_real_run_results_match_the_stage_files(real):
    r, page, results = real
    run = r.run
    per_image = pd.read_csv(run / "per_image.csv")
    assert results["summary"]["n_images"] == len(per_image) == 40
    assert results["summary"]["score"]["mean"] == pytest.approx(per_image.score.mean())
    ceiling = json.loads((run / "correlations.json").read_text())["ceiling"]
    assert results["summary"]["noise_ceiling"]["split_half_spearman"] == pytest.approx(ceiling["spearman_mean"])
    assert results["summary"]["noise_ceiling"]["spearman_brown"] == pytest.approx(ceiling["spearman_brown"])

    # training: train's curve, exposure log and settings
    curve = pd.read_csv(run / "training_curve.csv")
    exposure = pd.read_csv(run / "exposure.csv")
    tr = results["training"]
    assert tr["curve"]["experience"]["epochs"] == 2
    exp_rows = curve[curve.phase == "experience"]
    assert tr["curve"]["experience"]["final_loss"] == pytest.approx(exp_rows.loss.iloc[-1])
    assert tr["exposure"]["n_images"] == len(exposure) == 40
    assert tr["exposure"]["mean_loss"] == pytest.approx(exposure.loss.mean())
    assert tr["settings"]["autoencoder"] == "small" and tr["settings"]["images exposed once"] == 40

    # reconstruction and distinctiveness: analyze's rows, per category, within and partial
    corr = pd.read_csv(run / "correlations.csv", dtype={"group": str, "control": str}).fillna(
        {"group": "", "control": ""})
    rec = results["reconstruction"]
    assert rec["primary"] == "recon_mse"  # the training loss
    assert set(rec["measures"]) == {c for c in per_image.columns if c.startswith("recon_")}
    for x, sec in (("recon_mse", "reconstruction"), ("distinctiveness", "distinctiveness")):
        got = results[sec]["measures"][x]
        rows = corr[corr.x == x]
        assert got["pooled"]["r"] == pytest.approx(rows[rows.scope == "pooled"].r.iloc[0])
        assert got["pooled"]["ci_low"] == pytest.approx(rows[rows.scope == "pooled"].ci_low.iloc[0])
        for cat, numbers in got["by_category"].items():
            assert numbers["r"] == pytest.approx(rows[(rows.scope == "group") & (rows.group == cat)].r.iloc[0])
        assert got["within"]["r"] == pytest.approx(rows[rows.scope == "within"].r.iloc[0])
        assert [p["control"] for p in got["partial"]] == list(rows[rows.scope == "partial"].control)
    assert len(results["correlations"]["rows"]) == len(corr)

    # predictor: fit-predictor's folds (not its mean rows), ceiling and out-of-fold predictions
    cv = pd.read_csv(run / "predictor_cv.csv")
    folds, means = cv[cv.fold.astype(str) != "mean"], cv[cv.fold.astype(str) == "mean"]
    pred = results["predictor"]
    assert pred["inputs"] == "latents" and pred["saved_model"] == "svr"  # fit-predictor's default model
    for model in ("mlp", "svr", "ridge"):
        f = folds[folds.model == model]
        assert pred["models"][model]["n_folds"] == 3
        assert pred["models"][model]["spearman_mean"] == pytest.approx(f.spearman.astype(float).mean())
        assert pred["models"][model]["spearman_mean"] == pytest.approx(float(means[means.model == model].spearman.iloc[0]))
    # one ceiling throughout the report: sqrt of the Spearman-Brown reliability, as in the correlation table
    assert pred["consistency"] == pytest.approx(float(means.human_consistency.iloc[0]))
    assert pred["spearman_brown"] == pytest.approx(float(means.spearman_brown.iloc[0]))
    assert pred["ceiling"] == pytest.approx(float(means.spearman_brown.iloc[0]) ** 0.5)
    svr = pred["models"]["svr"]
    assert svr["spearman_over_ceiling"] == pytest.approx(svr["spearman_mean"] / pred["ceiling"])
    assert svr["spearman_over_ceiling"] <= 1
    oof = pd.read_csv(run / "predictor_oof.csv")
    assert pred["oof"]["mlp"]["r"] == pytest.approx(spearmanr(oof.predicted_mlp, oof.score).statistic)

    # galleries: thumbnails of the real images, predicted = out-of-fold predictions of the saved model
    g = results["galleries"]
    assert g["predicted_source"].startswith("predictor_oof.csv (support-vector regression")
    assert [t["image_id"] for t in g["human_top"]] == list(per_image.nlargest(len(g["human_top"]), "score").image_id)
    top_pred = oof.nlargest(len(g["predicted_top"]), "predicted_svr")
    assert [t["image_id"] for t in g["predicted_top"]] == list(top_pred.image_id)
    n_thumbs = sum(len(v) for v in g.values() if isinstance(v, list))
    assert _section(page, "galleries").count('src="data:image/jpeg;base64,') == n_thumbs == 4 * 8

    # explanations: explain's overlays (labelled), aggregate maps, sanity check
    explain = json.loads((run / "attributions" / "explain.json").read_text())
    sanity = json.loads((run / "attributions" / "sanity.json").read_text())
    ex = results["explanations"]
    assert [(o["group"], o["image_id"], o["file"]) for o in ex["overlays"]] == [
        (grp, e["image_id"], e["file"]) for grp in ("top", "bottom") for e in explain["explained"][grp]]
    assert len(ex["overlays"]) == 4
    assert ex["aggregates"] == ["aggregate_quartiles.png", "aggregate_most_memorable.png",
                                "aggregate_least_memorable.png", "aggregate_difference.png"]
    assert ex["sanity"]["mean_spearman"] == pytest.approx(sanity["mean_spearman"])
    assert ex["sanity"]["passed"] is sanity["passed"]
    sec = _section(page, "explanations")
    assert ("passed" if sanity["passed"] else "FAILED") in sec
    assert f"{100 * explain['integrated_gradients']['max_map_error']:.1f}%)" in sec  # the maps' estimated accuracy
    # a failed randomisation check is said before the maps, not only in its own section below them
    caution = sec.find("Read these maps with caution")
    assert (caution != -1) is (not sanity["passed"])
    if caution != -1:
        assert caution < sec.find("<img") and f"over {sanity['n_images']} images" in sec
    assert sec.count("<img") == 4 + 1  # overlays + the quartile figure (it holds the three single maps)

    # descriptors: explain's correlations with both targets
    dc = pd.read_csv(run / "descriptor_correlations.csv")
    rows = {row["descriptor"]: row for row in results["descriptors"]["rows"]}
    assert results["descriptors"]["targets"] == ["score", "predicted_score"]
    assert set(dc.scope) == {"pooled", "within", "between"}  # the real run has five categories
    for rec_ in dc[dc.scope == "pooled"].to_dict("records"):
        got = rows[rec_["descriptor"]][rec_["target"]]
        assert got["r"] == pytest.approx(rec_["r"]) and got["n"] == rec_["n"]
        assert got["p_fdr"] == pytest.approx(rec_["p_fdr"])
    # explain's p_fdr: Benjamini-Hochberg over every row of the file (pooled, within, between)
    from memlens.stats import fdr_bh

    assert dc.p_fdr.to_numpy() == pytest.approx(fdr_bh(dc.p_value.to_numpy()), nan_ok=True)
    parts = {(p["descriptor"], p["target"]): p for p in results["descriptors"]["category_parts"]}
    within = dc[(dc.scope == "within") & (dc.descriptor == "edge_density") & (dc.target == "score")].iloc[0]
    assert parts[("edge_density", "score")]["within"]["r"] == pytest.approx(within.r)
    from memlens.stats import between_groups, correlate

    desc = pd.read_csv(run / "descriptors.csv").merge(per_image[["image_id", "category"]], on="image_id")
    assert within.r == pytest.approx(correlate(desc.edge_density, desc.score, groups=desc.category, n_boot=0).r)
    between = dc[(dc.scope == "between") & (dc.descriptor == "edge_density") & (dc.target == "score")].iloc[0]
    assert between.r == pytest.approx(between_groups(desc.edge_density, desc.score, desc.category, n_boot=0).r)
    assert parts[("edge_density", "score")]["between"]["n_groups"] == 5
    assert "Within and between categories" in _section(page, "descriptors")

    # methods: versions, device, seeds and the commands that made the run
    m = results["methods"]
    assert m["manifest"]["versions"]["torch"] == json.loads((run / "manifest.json").read_text())["versions"]["torch"]
    assert m["seeds"] == {"train": 0, "analyze": 0, "fit-predictor": 0, "explain": 0, "report": 0}  # ints, not text
    assert "0 (bootstrap, 50 resamples)" in _section(page, "methods")
    stages = ["check", "train", "score", "analyze", "fit-predictor", "explain"]
    assert [c.split()[1] for c in m["commands"]][:6] == stages  # (+ report, once pipeline.json records it)
    assert "--inputs" not in m["commands"][4] and "--features latents" in m["commands"][4]


def test_featured_error_follows_a_complement_loss():
    """A run trained on 1 - LPIPS (the released scripts) features the LPIPS distance, not a fallback."""
    from memlens.report.sections.reconstruction import _primary_recon

    cols = ["recon_mse", "recon_lpips-squeeze", "recon_lpips-squeeze_before", "recon_exposure"]
    assert _primary_recon(cols, {"train": {"loss": "1-lpips-squeeze"}}) == "recon_lpips-squeeze"
    assert _primary_recon(cols, {"train": {"loss": "lpips-squeeze"}}) == "recon_lpips-squeeze"
    assert _primary_recon(cols, {"train": {"loss": "l1"}}) == "recon_mse"


def test_real_run_predictor_parts_within_and_between_categories(real):
    """The predictor's honest predictions, pooled / within / between categories, recomputed from the files."""
    from memlens.stats import between_groups, correlate

    r, page, results = real
    parts = results["predictor"]["estimate_parts"]
    oof = pd.read_csv(r.run / "predictor_oof.csv")
    est = results["predictor"]["estimate"]
    oof = oof[oof.part == est["kind"]]
    cats = pd.read_csv(r.run / "per_image.csv").set_index("image_id").category
    g = oof.image_id.map(cats).to_numpy(dtype=object)
    pred = oof[f"predicted_{est['model']}"]
    within = correlate(pred, oof.score, groups=g, n_boot=0)
    assert parts["within"]["r"] == pytest.approx(within.r) and parts["within"]["n"] == len(oof)
    assert parts["pooled"]["r"] == pytest.approx(correlate(pred, oof.score, n_boot=0).r)
    assert parts["between"]["r"] == pytest.approx(between_groups(pred, oof.score, g, n_boot=0).r)
    assert parts["between"]["n_groups"] == len(set(g)) and set(parts["categories"]) == set(g)
    assert results["headline"]["predictor rho within category (same images)"] == pytest.approx(within.r, abs=5e-4)
    assert "within and between categories" in _section(page, "predictor")
