"""`memlens predict`: new images scored end to end with a fitted run; unreadable files skipped."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from _fake_run import real_run as _real_run
from memlens.cli import main
from memlens.inference import collect_images, predict_images
from memlens.predict import load_memorability_model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _real_run(tmp_path_factory)


def test_predict_folder_writes_every_image(run, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run.data), "--run", str(run.run), "-o", str(out), "--batch-size", "7"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["image", "predicted_score"]
    n_images = len(collect_images([run.data])[0])
    assert len(table) == n_images and n_images >= 40  # the demo set plus its experience corpus
    assert np.isfinite(table.predicted_score).all() and table.predicted_score.std() > 0


def test_scores_match_the_model_and_do_not_depend_on_the_batch(run):
    files = sorted((run.data).rglob("demo_*.jpg"))[:9]
    a = predict_images(files, run.run, batch_size=1).table
    b = predict_images(files, run.run, batch_size=4).table
    np.testing.assert_allclose(a.predicted_score, b.predicted_score, rtol=0, atol=1e-6)
    # same numbers as the model applied by hand to the decoded images
    from memlens.data import load_image

    model = load_memorability_model(run.run / "predictor.pt")
    x = torch.from_numpy(np.stack([load_image(f, model.input_size) for f in files])).permute(0, 3, 1, 2) / 255.0
    np.testing.assert_allclose(a.predicted_score, model.predict(x.float()), rtol=0, atol=1e-5)


def test_unreadable_files_are_listed_and_skipped(run, tmp_path, capsys):
    good = sorted((run.data).rglob("demo_*.jpg"))[0]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    rc = main(["predict", str(good), str(bad), str(empty), str(tmp_path / "missing.jpg"), "--run", str(run.run)])
    assert rc == 0
    captured = capsys.readouterr()
    rows = pd.read_csv(__import__("io").StringIO(captured.out))
    assert rows.image.tolist() == [str(good)]
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 3
    assert any("broken.jpg" in s for s in skipped) and any("missing.jpg" in s for s in skipped)
    assert "Traceback" not in captured.err


def test_nothing_readable_exits_1(run, tmp_path, capsys):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"junk")
    assert main(["predict", str(bad), "--run", str(run.run)]) == 1


def test_missing_predictor_is_a_clear_error(tmp_path, capsys):
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(img)
    (tmp_path / "run").mkdir()
    assert main(["predict", str(img), "--run", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "predictor.pt: missing" in err and "memlens fit-predictor" in err
