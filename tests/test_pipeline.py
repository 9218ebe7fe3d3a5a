"""`memlens run` resumes what is up to date, reruns what changed, and never mixes two runs' outputs."""

from __future__ import annotations

import contextlib
import io
import json
import os

import pandas as pd
import pytest

from memlens.cli import main

#: the pipeline without predictor and explain: the stages whose resume logic is under test, in seconds
FAST = ("--backbone", "small", "--image-size", "32", "--pretrain-epochs", "1", "--metrics", "mse",
        "--feature-size", "32", "--n-boot", "20", "--seed", "0", "--device", "cpu", "--batch-size", "8",
        "--skip", "predictor", "--skip", "explain")
OUTPUTS = ("autoencoder.pt", "per_image.csv", "latents.npy", "correlations.json", "report.html")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from memlens.data import make_demo_set

    return make_demo_set(tmp_path_factory.mktemp("d") / "demo", n_images=20, n_experience=8, image_size=32,
                         n_observers=20, n_splits=2)


def _run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = main(["run", *args])
    return rc, out.getvalue()


def _stamps(run) -> dict[str, int]:
    return {f: (run / f).stat().st_mtime_ns for f in OUTPUTS}


def test_second_run_is_up_to_date_and_a_changed_option_reruns_from_its_stage(data, tmp_path):
    run = tmp_path / "run"
    rc, text = _run(str(data), "--out", str(run), *FAST)
    assert rc == 0, text
    before = _stamps(run)
    record = (run / "pipeline.json").stat().st_mtime_ns
    rc, text = _run(str(data), "--out", str(run), *FAST)
    assert rc == 0, text
    for stage in ("check", "train", "score", "analyze", "report"):
        assert f"[{stage}] up to date, skipped" in text, text
    assert _stamps(run) == before and (run / "pipeline.json").stat().st_mtime_ns == record  # nothing rewritten
    state = json.loads((run / "pipeline.json").read_text())
    assert len(state["fingerprint"]) == 64 and state["stages"]["train"]["status"] == "done"

    # another analysis option: train and score stay, analyze and report rerun
    rc, text = _run(str(data), "--out", str(run), *FAST[:-4], "--n-boot", "30", *FAST[-4:])
    assert rc == 0, text
    assert "[train] up to date" in text and "[score] up to date" in text
    assert "[analyze] memlens analyze" in text and "[report] memlens report" in text
    after = _stamps(run)
    assert after["autoencoder.pt"] == before["autoencoder.pt"] and after["per_image.csv"] == before["per_image.csv"]
    assert after["correlations.json"] != before["correlations.json"]


def test_the_same_run_from_another_folder_or_an_older_version_is_up_to_date(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert _run(str(data), "--out", str(run), *FAST)[0] == 0
    before = _stamps(run)
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rc, text = _run(os.path.relpath(data, elsewhere), "--out", "../run", *FAST)
    assert rc == 0, text
    assert text.count("up to date, skipped") == 5 and _stamps(run) == before
    # a pipeline.json written before fingerprints were recorded: adopted, nothing reruns
    state = json.loads((run / "pipeline.json").read_text())
    del state["fingerprint"]
    for st in state["stages"].values():  # older versions recorded DATA and RUN as typed
        st["args"] = [os.path.relpath(a, elsewhere) if a in (str(data.resolve()), str(run.resolve())) else a
                      for a in st["args"]]
    (run / "pipeline.json").write_text(json.dumps(state))
    rc, text = _run(str(data), "--out", str(run), *FAST)
    assert rc == 0 and "data changed" not in text and text.count("up to date, skipped") == 5, text
    assert "fingerprint" in json.loads((run / "pipeline.json").read_text())


def test_changed_data_reruns_everything(data, tmp_path):
    import shutil

    own = tmp_path / "data"
    shutil.copytree(data, own)
    run = tmp_path / "run"
    assert _run(str(own), "--out", str(run), *FAST)[0] == 0
    first = _stamps(run)
    img = next(p for p in (own / "city").rglob("*.jpg"))
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))  # an image replaced
    rc, text = _run(str(own), "--out", str(run), *FAST)
    assert rc == 0, text
    assert "the data changed since the last run" in text and "up to date" not in text
    assert all(v != first[k] for k, v in _stamps(run).items())

    # DATA given as the table file: a replaced image is changed data too
    table = str(own / "memcat_image_data.csv")
    run2 = tmp_path / "run2"
    assert _run(table, "--out", str(run2), *FAST)[0] == 0
    (own / "notes.txt").write_text("a file the data set does not use")  # not data: nothing reruns
    rc, text = _run(table, "--out", str(run2), *FAST)
    assert rc == 0 and text.count("up to date, skipped") == 5, text
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    rc, text = _run(table, "--out", str(run2), *FAST)
    assert rc == 0 and "the data changed since the last run" in text, text

    # an experience corpus outside the data is part of what the run was made from
    exp = tmp_path / "exp"
    shutil.copytree(own / "experience", exp)
    run3 = tmp_path / "run3"
    assert _run(str(own), "--out", str(run3), "--experience", str(exp), *FAST)[0] == 0
    shutil.copy(next(exp.glob("*.jpg")), exp / "added.jpg")
    rc, text = _run(str(own), "--out", str(run3), "--experience", str(exp), *FAST)
    assert rc == 0 and "the data changed since the last run" in text, text


def test_an_earlier_run_is_never_mixed_with_a_new_one(data, tmp_path):
    run = tmp_path / "run"
    assert _run(str(data), "--out", str(run), *FAST)[0] == 0
    # a run directory of the full pipeline: the stages a later run skips must not survive a retraining
    (run / "predictor.pt").write_bytes(b"an earlier run's predictor")
    (run / "attributions").mkdir()
    rc, text = _run(str(data), "--out", str(run), *FAST[:-4], "--seed", "1", *FAST[-4:])
    assert rc == 0, text
    assert "[train] memlens train" in text and "--overwrite" in text
    assert not (run / "predictor.pt").exists() and not (run / "attributions").exists()

    # a directory of hand-run stages (no pipeline.json) is not replaced without --force
    (run / "pipeline.json").unlink()
    (run / "predictor.pt").write_bytes(b"kept")
    rc, text = _run(str(data), "--out", str(run), *FAST[:-4], "--seed", "2", *FAST[-4:])
    assert rc != 0 and "holds results of an earlier run that memlens run did not make" in text
    assert "Traceback" not in text and (run / "predictor.pt").read_bytes() == b"kept"
    rc, text = _run(str(data), "--out", str(run), *FAST[:-4], "--seed", "2", *FAST[-4:])  # and again
    assert rc != 0 and "did not make" in text and (run / "predictor.pt").read_bytes() == b"kept"
    rc, text = _run(str(data), "--out", str(run), "--force", *FAST[:-4], "--seed", "2", *FAST[-4:])
    assert rc == 0, text
    assert not (run / "predictor.pt").exists()


def test_skipped_stage_after_a_rerun_is_reported_stale(data, tmp_path):
    run = tmp_path / "run"
    assert _run(str(data), "--out", str(run), *FAST[:-4], "--skip", "explain")[0] == 0  # with the predictor
    assert (run / "predictor.pt").is_file()
    rc, text = _run(str(data), "--out", str(run), *FAST[:-4], "--metrics", "mse,l1", *FAST[-4:])
    assert rc == 0, text
    assert "[score] memlens score" in text
    assert "[predictor] skipped (--skip); its files" in text and "older than this run's score" in text
    assert "were made from the previous scores" not in text  # the pipeline reruns them itself
    # the skipped stage is out of date from now on: without --skip it reruns
    rc, text = _run(str(data), "--out", str(run), *FAST[:-4], "--metrics", "mse,l1", "--skip", "explain")
    assert rc == 0, text
    assert "[score] up to date" in text and "[predictor] memlens fit-predictor" in text


def test_train_refuses_to_leave_later_outputs_out_of_date(data, tmp_path):
    args = ["train", str(data), "--backbone", "small", "--image-size", "32", "--pretrain-epochs", "1",
            "--device", "cpu", "--batch-size", "8"]
    run = tmp_path / "run"
    assert main([*args, "--out", str(run)]) == 0
    (run / "per_image.csv").write_text("image_id,score\n")
    (run / "featureset_lite01.npy").write_bytes(b"x")
    stamp = (run / "autoencoder.pt").stat().st_mtime_ns
    out = io.StringIO()
    with contextlib.redirect_stderr(out):
        assert main([*args, "--out", str(run), "--seed", "4"]) == 1
    assert "holds results of an earlier run (featureset_lite01.npy, per_image.csv)" in out.getvalue()
    assert (run / "autoencoder.pt").stat().st_mtime_ns == stamp and (run / "per_image.csv").is_file()
    # --resume of a finished training is a new training too: the same refusal
    out = io.StringIO()
    with contextlib.redirect_stderr(out):
        assert main([*args, "--out", str(run), "--seed", "4", "--resume"]) == 1
    assert "holds results of an earlier run" in out.getvalue()
    assert main([*args, "--out", str(run), "--seed", "4", "--overwrite"]) == 0
    assert not (run / "per_image.csv").exists() and not (run / "featureset_lite01.npy").exists()


@pytest.mark.parametrize("bad,message", [
    (["--image-size", "30"], "30"),
    (["--loss", "msse"], "msse"),
])
def test_bad_training_settings_write_nothing(data, tmp_path, bad, message):
    run = tmp_path / "fresh"
    out = io.StringIO()
    with contextlib.redirect_stderr(out):
        rc = main(["train", str(data), "--out", str(run), "--backbone", "small", "--image-size", "32",
                   "--pretrain-epochs", "1", "--device", "cpu", *bad])
    assert rc != 0 and message in out.getvalue() and "Traceback" not in out.getvalue()
    assert not run.exists() or not any(run.iterdir())


def test_out_below_a_file_is_a_clear_error(data, tmp_path):
    (tmp_path / "afile.txt").write_text("hi")
    out = io.StringIO()
    with contextlib.redirect_stderr(out):
        rc = main(["train", str(data), "--out", str(tmp_path / "afile.txt" / "sub"), "--backbone", "small",
                   "--image-size", "32", "--device", "cpu"])
    assert rc == 1 and "afile.txt is a file, not a directory" in out.getvalue() and "internal error" not in out.getvalue()


def test_score_variant_reaches_training_and_scoring(data, tmp_path):
    run = tmp_path / "run"
    rc, text = _run(str(data), "--out", str(run), "--score-variant", "uncorrected", *FAST[:-4], "--skip", "predictor",
                    "--skip", "explain", "--skip", "report", "--skip", "analyze")
    assert rc == 0, text
    ds = json.loads((run / "dataset.json").read_text())
    assert ds["options"].get("score_variant") == "uncorrected"
    per = pd.read_csv(run / "per_image.csv")
    assert per["score"].tolist() == pytest.approx(per["memorability_wo_fa_correction"].tolist())
    assert not per["score"].equals(per["memorability_w_fa_correction"])


def test_output_paths_below_a_file_are_one_line_errors(tmp_path, capsys):
    """report, predict and run refuse an output below a file before any work, without a traceback."""
    (tmp_path / "afile.txt").write_text("hi")
    bad = tmp_path / "afile.txt"
    run = tmp_path / "run"
    run.mkdir()
    for args in (["report", str(run), "-o", str(bad / "x.html")],
                 ["predict", str(tmp_path), "--run", str(run), "-o", str(bad / "p.csv")],
                 ["run", str(tmp_path), "--out", str(bad / "sub")]):
        assert main(args) == 1, args
        err = capsys.readouterr().err
        assert "afile.txt is a file, not a directory" in err and "internal error" not in err, (args, err)
    assert (tmp_path / "afile.txt").read_text() == "hi"
    assert main(["predict", str(tmp_path), "--run", str(tmp_path / "nope")]) == 1
    assert "--run " + str(tmp_path / "nope") + ": no such run directory" in capsys.readouterr().err


def test_run_directory_inside_the_data_is_refused(data, tmp_path, capsys):
    import shutil

    own = tmp_path / "data"
    shutil.copytree(data, own)
    assert main(["train", str(own), "--out", str(own), "--backbone", "small", "--image-size", "32",
                 "--device", "cpu"]) == 1
    assert "the data folder" in capsys.readouterr().err and not (own / "config.json").exists()
    # a folder of images (no table): a run below it would add its PNGs to the data
    pics = tmp_path / "pics"
    shutil.copytree(own / "city", pics)
    assert main(["train", str(pics), "--out", str(pics / "runs" / "r1"), "--backbone", "small", "--image-size",
                 "32", "--device", "cpu"]) == 1
    assert "inside a data folder read image by image" in capsys.readouterr().err
    assert not (pics / "runs").exists()


def test_interrupt_exits_130(monkeypatch, capsys):
    import memlens.commands.stats as stats_cmd

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(stats_cmd, "_read_table", stop)
    assert main(["stats", "t.csv", "--x", "a", "--y", "b"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_scoring_other_data_into_an_analysed_run_is_refused(data, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    assert _run(str(data), "--out", str(run), *FAST)[0] == 0
    # the same data, spelled as the folder: fine, with a note that the analyses are now older than the scores
    capsys.readouterr()
    assert main(["-q", "score", str(data), "--run", str(run), "--metrics", "mse", "--feature-size", "32",
                 "--device", "cpu"]) == 0
    assert "correlations.json, report.html in" in capsys.readouterr().err
    before = (run / "per_image.csv").read_bytes()
    other = tmp_path / "other"
    shutil.copytree(data, other)
    (other / "city").rename(other / "elsewhere")
    capsys.readouterr()
    assert main(["score", str(tmp_path / "other"), "--run", str(run), "--metrics", "mse", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "its analyses (correlations.json" in err and "would leave them out of date" in err
    assert (run / "per_image.csv").read_bytes() == before
    # the same images with other scores, beside the original table: other data too
    import pandas as pd

    table = pd.read_csv(data / "memcat_image_data.csv")
    table["memorability_w_fa_correction"] = table["memorability_w_fa_correction"].to_numpy()[::-1]
    shuffled = tmp_path / "shuffled"
    shutil.copytree(data, shuffled)
    table.to_csv(shuffled / "memcat_image_data.csv", index=False)
    assert main(["score", str(shuffled), "--run", str(run), "--metrics", "mse", "--device", "cpu"]) == 1
    assert "is other data" in capsys.readouterr().err
    # the very same data copied elsewhere is the same data
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    assert main(["-q", "score", str(moved), "--run", str(run), "--metrics", "mse", "--feature-size", "32",
                 "--device", "cpu"]) == 0


def test_a_failing_stage_is_recorded_as_failed_not_running(data, tmp_path):
    run = tmp_path / "run"
    assert _run(str(data), "--out", str(run), *FAST)[0] == 0
    (run / "per_image.csv").write_text("not,a\nrun table\n")  # analyze will fail on it at run time
    rc, text = _run(str(data), "--out", str(run), *FAST[:-4], "--set", "analyze.ci=bca", *FAST[-4:])
    assert rc == 1 and "per_image.csv" in text
    stages = json.loads((run / "pipeline.json").read_text())["stages"]
    assert stages["analyze"]["status"] == "failed" and stages["score"]["status"] == "done"


def test_training_interrupted_after_the_visual_experience_resumes(data, tmp_path):
    """Stopped after autoencoder_before.pt was written (no checkpoint yet): the rerun continues, it does not
    redo the visual experience."""
    from memlens.train import later_outputs

    run = tmp_path / "run"
    assert _run(str(data), "--out", str(run), *FAST)[0] == 0
    state = json.loads((run / "pipeline.json").read_text())
    state["stages"] = {"check": state["stages"]["check"], "train": {**state["stages"]["train"], "status": "interrupted"}}
    (run / "pipeline.json").write_text(json.dumps(state))
    (run / "autoencoder.pt").unlink()
    for name in later_outputs(run):
        (run / name).unlink()
    before = (run / "autoencoder_before.pt").stat().st_mtime_ns
    rc, text = _run(str(data), "--out", str(run), *FAST)
    assert rc == 0, text
    assert "--resume" in text and "--overwrite" not in text
    assert (run / "autoencoder_before.pt").stat().st_mtime_ns == before  # reused, not retrained


def test_a_bad_option_of_a_late_stage_fails_before_anything_runs(data, tmp_path):
    run = tmp_path / "run"
    rc, text = _run(str(data), "--out", str(run), *FAST[:-4], "--set", "report.nope=1")
    assert rc == 2 and "report.nope: unknown option (report takes none)" in text  # a usage error
    rc, text = _run(str(data), "--out", str(run), *FAST, "--set", "analyze.method=kendall")
    assert rc == 2 and "kendall" in text and "[check]" not in text
    assert not run.exists()
