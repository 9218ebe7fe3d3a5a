"""The notebook API: memlens.predict_images / score / analyze return DataFrames; in-memory images score as
their files do; a run is never changed by score; the CLI's predict is a thin layer over the same function."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import memlens
from _fake_run import real_run as _real_run
from memlens.cli import main


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return _real_run(tmp_path_factory)


@pytest.fixture(scope="module")
def images(real):
    return [str(p) for p in sorted(real.data.rglob("demo_*.jpg"))[:5]]


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_predict_images_takes_paths_pil_and_arrays(real, images, tmp_path, capsys):
    table = memlens.predict_images(images, run=real.run, batch_size=2)
    assert list(table.columns) == ["image", "predicted_score"] and table.image.tolist() == images
    assert table.attrs["problems"] == []
    # the CLI writes the very same numbers
    out = tmp_path / "p.csv"
    assert main(["predict", *images, "--run", str(real.run), "-o", str(out)]) == 0
    np.testing.assert_allclose(pd.read_csv(out).predicted_score, table.predicted_score, atol=1e-6)
    with Image.open(images[1]) as im:
        pil = im.convert("RGB")
    arr8 = np.asarray(pil)
    mixed = memlens.predict_images([pil, arr8, arr8 / 255.0, images[1]], run=real.run)
    assert mixed.image.tolist() == ["<image 0>", "<image 1>", "<image 2>", images[1]]
    np.testing.assert_allclose(mixed.predicted_score, table.predicted_score[1], rtol=0, atol=1e-6)
    batch = memlens.predict_images(np.stack([arr8, arr8]), run=real.run)  # one (N, H, W, 3) array
    assert len(batch) == 2 and batch.predicted_score.nunique() == 1
    one = memlens.predict_images(images[1], run=real.run)  # a single path
    assert one.predicted_score[0] == pytest.approx(table.predicted_score[1], abs=1e-6)
    with pytest.raises(ValueError, match="observed min"):
        memlens.predict_images(arr8 * 1.0, run=real.run)  # 0-255 floats: refused, naming the range


def test_predict_images_unreadable_files_raise_or_are_skipped(real, images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(memlens.ValidationError) as err:
        memlens.predict_images([images[0], bad, tmp_path / "missing.png"], run=real.run)
    assert len(err.value.lines()) == 2 and "broken.jpg" in str(err.value)
    kept = memlens.predict_images([images[0], bad], run=real.run, errors="skip")
    assert kept.image.tolist() == [images[0]] and len(kept.attrs["problems"]) == 1
    with pytest.raises(memlens.ConfigError, match="fitted on labelled images"):
        memlens.predict_images(images, model="ridge-lite0")
    with pytest.raises(memlens.MemlensError, match="give a run directory"):
        memlens.predict_images(images)


def test_score_measures_new_images_without_touching_the_run(real, images):
    before = _digest(real.run)
    measures = memlens.score(images, run=real.run)
    assert _digest(real.run) == before  # nothing written
    assert measures.image_id.tolist() == images
    assert {"recon_mse", "recon_dssim", "recon_mse_before", "distinctiveness", "distinctiveness_features"} <= set(
        measures.columns)
    # an image of the run gets the run's own numbers, and finds itself among the run's images
    per_image = pd.read_csv(real.run / "per_image.csv").set_index("image_id")
    ids = [str(p.relative_to(real.data)) for p in map(__import__("pathlib").Path, images)]
    np.testing.assert_allclose(measures.recon_mse, per_image.loc[ids, "recon_mse"], rtol=1e-5)
    np.testing.assert_allclose(measures.recon_dssim_before, per_image.loc[ids, "recon_dssim_before"], rtol=1e-5)
    np.testing.assert_allclose(measures.distinctiveness, 0.0, atol=1e-3)
    # a data set keeps its scores; in-memory images work too
    table = memlens.score(real.data, run=real.run)
    assert len(table) == len(per_image) and {"score", "category"} <= set(table.columns)
    with Image.open(images[0]) as im:
        arr = np.asarray(im.convert("RGB")) / 255.0
    mem = memlens.score([arr], run=real.run)
    assert mem.image_id.tolist() == ["<image 0>"]
    assert mem.recon_mse[0] == pytest.approx(measures.recon_mse[0], rel=1e-4)


def test_analyze_returns_the_correlation_table(real, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(real.run, run)
    table = memlens.analyze(run, n_boot=100, seed=1)
    written = pd.read_csv(run / "correlations.csv")
    assert list(table.columns) == list(written.columns) and len(table) == len(written)
    assert set(table.x) >= {"recon_mse", "distinctiveness"} and "pooled" in set(table.scope)
