"""The embedded synthetic demo set: files, determinism, the simulated experiment and its known truth."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import spearmanr

import memlens.data
from memlens.data import demo, load_split_halves, make_demo_set
from memlens.errors import ConfigError, DataError

SMALL = dict(n_images=30, image_size=32, n_experience=6, n_observers=40, n_splits=5)


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def table(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "memcat_image_data.csv")


def image_ids(df: pd.DataFrame) -> list[str]:
    return [f"{c}/{s}/{f}" for c, s, f in zip(df.category, df.subcategory, df.image_file, strict=True)]


@pytest.fixture(scope="module")
def default_set(tmp_path_factory) -> Path:
    return make_demo_set(tmp_path_factory.mktemp("demo") / "set")


@pytest.fixture(scope="module")
def truth(default_set) -> pd.DataFrame:
    return pd.read_csv(default_set / "demo_truth.csv")


# ------------------------------------------------------------------------------------------ determinism
def test_same_seed_gives_byte_identical_files(tmp_path):
    a = make_demo_set(tmp_path / "a", seed=3, **SMALL)
    b = make_demo_set(tmp_path / "b", seed=3, **SMALL)
    ha, hb = tree_hashes(a), tree_hashes(b)
    assert len(ha) == 30 + 6 + 6  # images + experience + 6 tables and notes
    assert ha == hb


def test_different_seeds_differ(tmp_path):
    a = make_demo_set(tmp_path / "a", seed=0, **SMALL)
    b = make_demo_set(tmp_path / "b", seed=1, **SMALL)
    ha, hb = tree_hashes(a), tree_hashes(b)
    assert ha.keys() == hb.keys()  # same names (same categories and numbering) ...
    images = [k for k in ha if k.endswith(".jpg")]
    assert all(ha[k] != hb[k] for k in images)  # ... but every image differs
    assert not table(a)[["H", "FA"]].equals(table(b)[["H", "FA"]])


# ------------------------------------------------------------------------------------------ the memcat table
def test_memcat_layout_counts_and_columns(default_set):
    df = table(default_set)
    assert list(df.columns) == ["Unnamed: 0", *demo.MEMCAT_COLUMNS[1:]]
    assert len(df) == 240
    assert df["image_file"].is_unique
    assert df["Unnamed: 0"].tolist() == list(range(1, 241))
    assert (df["source"] == "memlens-demo (simulated)").all()
    assert (df[["current_height", "current_width"]] == 96).all().all()
    assert (df["searched_label"] == df["subcategory"]).all()
    assert df["category"].nunique() == 5
    assert df.groupby("category")["subcategory"].nunique().between(2, 3).all()
    assert df["category"].value_counts().tolist() == [48] * 5
    for rel in image_ids(df):
        assert (default_set / rel).is_file(), rel
    jpgs = {p.relative_to(default_set).as_posix() for p in default_set.rglob("*.jpg")
            if p.parts[-2] != "experience"}
    assert jpgs == set(image_ids(df))


def test_scores_follow_memcat_formulas_and_range(default_set):
    df = table(default_set)
    H, FA, n = df["H"].to_numpy(), df["FA"].to_numpy(), df["n_resp"].to_numpy()
    assert (n > 0).all() and (H >= 0).all() and (H <= n).all() and (FA >= 0).all() and (FA <= n).all()
    np.testing.assert_allclose(df["memorability_wo_fa_correction"], H / n, rtol=0, atol=1e-12)
    np.testing.assert_allclose(df["memorability_w_fa_correction"], (H - FA) / n, rtol=0, atol=1e-12)
    wo, w = df["memorability_wo_fa_correction"], df["memorability_w_fa_correction"]
    assert wo.between(0, 1).all() and w.between(0, 1).all()
    # MemCat-like: uncorrected mean 0.76 (sd 0.13), corrected 0.69 (sd 0.14), about 6.5% false alarms
    assert 0.65 < wo.mean() < 0.88 and 0.07 < wo.std() < 0.2
    assert 0.58 < w.mean() < 0.82 and 0.07 < w.std() < 0.2
    assert 0.02 < (FA / n).mean() < 0.12
    assert 50 <= n.mean() <= 120


# ------------------------------------------------------------------------------------------ the known truth
def test_truth_follows_the_documented_model(default_set, truth):
    df = table(default_set)
    assert truth["image_id"].tolist() == image_ids(df)
    m = demo.DEMO_MODEL
    vectors = truth[list(demo.PARAM_COLUMNS)].to_numpy()
    raw = demo.parameter_distinctiveness(vectors)
    np.testing.assert_allclose(truth["distinctiveness_raw"], raw, rtol=1e-6)
    np.testing.assert_allclose(truth["distinctiveness"], (raw - raw.mean()) / raw.std(), rtol=1e-6, atol=1e-8)
    offsets = {c.name: c.offset for c in demo.DEMO_CATEGORIES}
    np.testing.assert_allclose(truth["category_offset"], truth["category"].map(offsets))
    logit = (m["b0"] + m["b_dist"] * truth["distinctiveness"] + m["b_sal"] * truth["salient_contrast"]
             + truth["category_offset"] + truth["image_noise"])
    np.testing.assert_allclose(truth["logit_p"], logit, rtol=1e-6)
    np.testing.assert_allclose(truth["p_true"], 1 / (1 + np.exp(-logit)), rtol=1e-6)
    assert ((truth["salient_contrast"] > 0) == (truth["salient"] == 1)).all()
    assert 0.25 < truth["salient"].mean() < 0.55


def test_truth_predicts_the_simulated_scores(default_set, truth):
    w = table(default_set)["memorability_w_fa_correction"].to_numpy()
    assert spearmanr(truth["p_true"], w)[0] > 0.8  # measured 0.91 (seed 0)
    assert spearmanr(truth["distinctiveness"], w)[0] > 0.35  # measured 0.58
    assert spearmanr(truth["salient_contrast"], w)[0] > 0.3  # measured 0.47
    within = [spearmanr(g["distinctiveness"], w[g.index])[0] for _, g in truth.groupby("category")]
    assert np.mean(within) > 0.3  # distinctiveness works within categories too (measured 0.6)
    sal = truth[truth["salient"] == 1]
    assert spearmanr(sal["salient_contrast"], sal["salient_contrast_measured"])[0] > 0.4  # rendered as drawn


def test_split_halves_are_consistent_like_humans(default_set):
    halves = load_split_halves(default_set / "split_halves.npz")
    df = table(default_set)
    assert list(halves.image_ids) == image_ids(df)
    assert halves.half1.shape == halves.half2.shape == (25, 240)
    both = np.concatenate([halves.half1, halves.half2])
    assert np.isfinite(both).all() and (both >= 0).all() and (both <= 1).all()
    rho = np.mean([spearmanr(a, b)[0] for a, b in zip(halves.half1, halves.half2, strict=True)])
    assert 0.6 < rho < 0.85  # human-like (LNSIM 0.78); measured 0.76 (seed 0)
    assert spearmanr(halves.scores(), df["memorability_wo_fa_correction"])[0] > 0.97


# ------------------------------------------------------------------------------------------ images
def test_images_decode_as_rgb_of_the_requested_size(default_set):
    df = table(default_set)
    feats, labels = [], []
    for rel, cat in zip(image_ids(df), df["category"], strict=True):
        with Image.open(default_set / rel) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (96, 96)
            arr = np.asarray(im, dtype=float) / 255
        assert arr.std() > 0.03  # not a flat image
        top, bottom = arr[:32].reshape(-1, 3), arr[64:].reshape(-1, 3)
        feats.append(np.concatenate([top.mean(0), bottom.mean(0), top.std(0), bottom.std(0)]))
        labels.append(cat)
    feats, labels = np.array(feats), np.array(labels)
    # categories look different: leave-one-out nearest centroid on simple colour statistics beats chance (0.2)
    correct = 0
    for i in range(len(feats)):
        mask = np.arange(len(feats)) != i
        cats = np.unique(labels)
        cents = np.stack([feats[mask & (labels == c)].mean(0) for c in cats])
        correct += cats[np.argmin(((cents - feats[i]) ** 2).sum(1))] == labels[i]
    assert correct / len(feats) > 0.5


def test_parameter_distinctiveness_is_visible_in_pixels(default_set, truth):
    df = table(default_set)
    x = np.stack([np.asarray(Image.open(default_set / rel).resize((32, 32)), dtype=float).ravel() / 255
                  for rel in image_ids(df)])
    sq = (x * x).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2 * x @ x.T
    np.fill_diagonal(d2, np.inf)
    pixel_nn = np.sqrt(np.maximum(d2.min(1), 0))
    assert spearmanr(truth["distinctiveness"], pixel_nn)[0] > 0.25  # measured 0.46


def test_experience_corpus_is_disjoint(default_set):
    exp = sorted((default_set / "experience").iterdir())
    assert len(exp) == 160 and all(p.suffix == ".jpg" for p in exp)
    names = {p.name for p in exp}
    assert not names & set(table(default_set)["image_file"])
    main_hashes = {h for k, h in tree_hashes(default_set).items() if k.endswith(".jpg")
                   and not k.startswith("experience/")}
    assert not {hashlib.sha256(p.read_bytes()).hexdigest() for p in exp} & main_hashes
    with Image.open(exp[0]) as im:
        assert im.mode == "RGB" and im.size == (96, 96)
    et = pd.read_csv(default_set / "experience_truth.csv")
    assert len(et) == 160 and set(et["category"]) == set(table(default_set)["category"])
    main_vec = pd.read_csv(default_set / "demo_truth.csv")[list(demo.PARAM_COLUMNS)].to_numpy()
    exp_vec = et[list(demo.PARAM_COLUMNS)].to_numpy()
    gap = np.abs(exp_vec[:, None, :] - main_vec[None, :, :]).sum(-1)
    assert gap.min() > 1e-3  # no experience image repeats a scored one


def test_readme_and_config_say_the_scores_are_simulated(default_set):
    text = (default_set / "README.txt").read_text()
    assert "SIMULATED" in text and "NOT from human participants" in text
    assert "seed=0" in text and "logit p_i" in text
    import json

    config = json.loads((default_set / "demo_config.json").read_text())
    assert config["arguments"]["seed"] == 0 and "SIMULATED" in config["scores"]
    assert 0.6 < config["measured"]["split_half_spearman"] < 0.85


# ------------------------------------------------------------------------------------------ safety
def test_refuses_a_non_empty_folder(tmp_path):
    root = tmp_path / "busy"
    root.mkdir()
    (root / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="not empty.*overwrite=True"):
        make_demo_set(root, **SMALL)
    with pytest.raises(DataError, match="does not look like a memlens demo set"):
        make_demo_set(root, overwrite=True, **SMALL)  # never deletes a foreign folder
    assert [p.name for p in root.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]  # no temporary folders left


def test_refuses_a_file_and_bad_arguments(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        make_demo_set(tmp_path / "file", **SMALL)
    with pytest.raises(ConfigError, match="n_images"):
        make_demo_set(tmp_path / "x", n_images=1)
    with pytest.raises(ConfigError, match="image_size.*n_observers"):
        make_demo_set(tmp_path / "x", image_size=8, n_observers=1)
    assert not (tmp_path / "x").exists()


def test_overwrite_replaces_an_earlier_demo_set_and_empty_folder_is_fine(tmp_path):
    root = tmp_path / "set"
    root.mkdir()
    make_demo_set(root, seed=0, **SMALL)  # empty folder: accepted
    first = tree_hashes(root)
    with pytest.raises(DataError):
        make_demo_set(root, seed=1, **SMALL)
    assert tree_hashes(root) == first
    make_demo_set(root, seed=1, overwrite=True, **SMALL)
    second = tree_hashes(root)
    assert second.keys() == first.keys() and second != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("renderer failed")

    monkeypatch.setattr(demo.build, "render_scene", broken)
    with pytest.raises(RuntimeError, match="renderer failed"):
        make_demo_set(tmp_path / "set", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_lazy_export():
    assert memlens.data.make_demo_set is demo.make_demo_set


# ------------------------------------------------------------------------------------------ memlens reader
def test_loads_through_the_memcat_layout(default_set):
    pytest.importorskip("memlens.data.layouts")
    from memlens.data import load_dataset

    ds = load_dataset(default_set)
    df = table(default_set)
    assert ds.layout == "memcat" and len(ds) == 240
    assert ds.table["image_id"].tolist() == image_ids(df)
    np.testing.assert_allclose(ds.table["score"], df["memorability_w_fa_correction"])
    assert ds.table["category"].nunique() == 5
    raw = load_dataset(default_set, layout="memcat", score_variant="uncorrected")
    np.testing.assert_allclose(raw.table["score"], df["memorability_wo_fa_correction"])
    if ds.halves is not None:
        assert list(ds.halves.image_ids) == ds.table["image_id"].tolist()


def test_demo_command_never_deletes_a_folder_that_is_not_a_demo_set(tmp_path, capsys):
    from memlens.cli import main

    mine = tmp_path / "project" / "data"
    mine.mkdir(parents=True)
    (mine / "precious.csv").write_text("image,score\n")
    assert main(["demo", "--out", str(tmp_path / "project")]) == 1
    assert (mine / "precious.csv").read_text() == "image,score\n"
    assert "Traceback" not in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "afile" / "x")]) == 1
    assert "afile is a file, not a directory" in capsys.readouterr().err
