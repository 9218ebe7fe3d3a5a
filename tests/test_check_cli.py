"""`memlens check`: summary and exit 0 for valid data, one line per problem and exit 1 otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from memlens.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LNSIM_DEV = SHARED / "lnsim-dev"


def make_image(path: Path, size=(16, 12), seed=0, mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return path


@pytest.fixture
def valid_set(tmp_path: Path) -> Path:
    root = tmp_path / "valid"
    rows = []
    for i in range(6):
        name = f"{'animal' if i % 2 else 'food'}/img{i}.jpg"
        make_image(root / name, seed=i, mode="L" if i < 2 else "RGB")
        rows.append({"filename": name, "memorability": 0.1 * (i + 1), "class": name.split("/")[0]})
    pd.DataFrame(rows).to_csv(root / "data.csv", index=False)
    return root


@pytest.fixture
def broken_set(tmp_path: Path) -> tuple[Path, list[str]]:
    """A folder seeded with a dozen broken inputs (and two good images)."""
    root = tmp_path / "broken"
    root.mkdir()
    good = make_image(root / "good.jpg", size=(64, 48))
    make_image(root / "good2.jpg", seed=2)
    data = good.read_bytes()
    (root / "zero.jpg").write_bytes(b"")
    (root / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    (root / "text.jpg").write_text("hello")
    make_image(root / "huge.png", size=(300, 300))  # over --max-pixels 50000
    os.symlink(make_image(tmp_path / "outside.jpg"), root / "escape.jpg")
    rows = [("good.jpg", 0.5), ("zero.jpg", 0.5), ("trunc.jpg", 0.5), ("corrupt.jpg", 0.5), ("text.jpg", 0.5),
            ("huge.png", 0.5), ("escape.jpg", 0.5), ("missing.jpg", 0.5), ("../up.jpg", 0.5),
            ("good2.jpg", "nan"), ("good2.jpg", 0.3), ("good.jpg", 1.7), ("good.jpg", "x")]
    pd.DataFrame(rows, columns=["image", "score"]).to_csv(root / "scores.csv", index=False)
    expected = ["zero.jpg: zero-byte file", "trunc.jpg: truncated image", "corrupt.jpg: corrupt image",
                "text.jpg: not an image file", "huge.png: 300x300 = 90,000 pixels exceeds the decompression-bomb",
                "escape.jpg: symlink points outside the data root", "missing.jpg: missing file",
                "../up.jpg: path escapes the data root", "good2.jpg: missing score (NaN)",
                "good.jpg: score 1.7 outside [0, 1]", "good.jpg: non-numeric score 'x'",
                "good.jpg: duplicate image id: listed 3 times", "good2.jpg: duplicate image id: listed 2 times"]
    return root, expected


def test_valid_set_summary(valid_set: Path, capsys):
    assert main(["check", str(valid_set)]) == 0
    out, err = capsys.readouterr()
    assert "csv layout, 6 images" in out
    assert "score: mean 0.350, sd 0.187, range 0.100 to 0.600" in out
    assert "categories (2): animal 3, food 3" in out
    assert "note: 2 grayscale images converted to RGB" in out
    assert "OK: no problems found" in out and err == ""


def test_broken_folder_one_line_per_problem(broken_set, capsys):
    root, expected = broken_set
    assert main(["check", str(root), "--max-pixels", "50000"]) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and "Traceback" not in err
    assert lines[-1] == f"{len(expected)} problems found in {root} (csv layout)"
    body = lines[:-1]
    assert len(body) == len(expected) == 13
    for want in expected:
        assert sum(line.startswith(want) for line in body) == 1, (want, body)


def test_json_format(broken_set, capsys):
    root, expected = broken_set
    assert main(["check", str(root / "scores.csv"), "--format", "json", "--max-pixels", "50000"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["layout"] == "csv" and report["n_problems"] == len(expected)
    assert {p["where"] for p in report["problems"]} >= {"zero.jpg", "../up.jpg", "huge.png"}
    assert report["summary"]["n_images"] == 0  # good.jpg and good2.jpg are flagged as duplicates


def test_json_format_valid(valid_set: Path, capsys):
    assert main(["check", str(valid_set), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["summary"]["n_images"] == 6
    assert report["conversions"] == {"grayscale": 2}
    assert report["summary"]["score"]["max"] == pytest.approx(0.6)


def test_column_flags(tmp_path: Path, capsys):
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png", seed=1)
    pd.DataFrame({"pic": ["a.png", "b.png"], "hr": [0.2, 0.4], "grp": ["x", "y"], "image": ["q", "r"]}
                 ).to_csv(tmp_path / "t.csv", index=False)
    # auto-detection takes "image" (no such files), the flags fix it
    assert main(["check", str(tmp_path / "t.csv")]) == 1
    assert "q: missing file" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "t.csv"), "--image-col", "pic", "--score-col", "hr",
                 "--category-col", "grp", "--layout", "csv"]) == 0
    out = capsys.readouterr().out
    assert "2 images" in out and "mean 0.300" in out and "categories (2): x 1, y 1" in out
    assert main(["check", str(tmp_path / "t.csv"), "--score-col", "nope"]) == 1
    assert "missing required column 'nope'" in capsys.readouterr().err


def test_memcat_and_lamem_flags(tmp_path: Path, capsys):
    root = tmp_path / "mc"
    make_image(root / "animal" / "cat" / "a.jpg")
    (root / "memcat_image_data.csv").write_text(
        "image_file,category,subcategory,memorability_wo_fa_correction,memorability_w_fa_correction\n"
        "a.jpg,animal,cat,0.8,0.6\n")
    assert main(["check", str(root)]) == 0
    assert "mean 0.600" in capsys.readouterr().out
    assert main(["check", str(root), "--score-variant", "uncorrected"]) == 0
    assert "mean 0.800" in capsys.readouterr().out
    lam = tmp_path / "lamem"
    make_image(lam / "images" / "1.jpg")
    make_image(lam / "images" / "2.jpg", seed=1)
    (lam / "splits").mkdir()
    (lam / "splits" / "train_1.txt").write_text("1.jpg 0.25\n")
    (lam / "splits" / "test_1.txt").write_text("2.jpg 0.75\n")
    assert main(["check", str(lam), "--split", "test_1"]) == 0
    assert "lamem layout, 1 images" in capsys.readouterr().out
    assert main(["check", str(lam), "--split", "val_3"]) == 1
    assert "no split file val_3.txt" in capsys.readouterr().err


def test_usage_errors_exit_2(valid_set: Path, capsys):
    assert main(["check", str(valid_set), "--layout", "excel"]) == 2
    assert main(["check"]) == 2
    assert main(["check", str(valid_set), "--max-pixels", "0"]) == 2


def test_missing_source(tmp_path: Path, capsys):
    assert main(["check", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nothing'}: no such file or folder" in err and "1 problem found" in err


def test_subprocess_exit_code_and_no_traceback(broken_set):
    root, expected = broken_set
    res = subprocess.run([sys.executable, "-m", "memlens.cli", "check", str(root), "--max-pixels", "50000"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(f"{len(expected)} problems found")


@pytest.mark.shared
def test_lnsim_dev_scores_check_passes(capsys):
    table = LNSIM_DEV / "scores.csv"
    if not table.is_file():
        pytest.skip(f"lnsim-dev absent: {LNSIM_DEV}")
    assert main(["check", str(table)]) == 0
    out = capsys.readouterr().out
    assert "1,974 images" in out and "OK: no problems found" in out


def test_progress_bar_has_rate_and_eta(valid_set: Path, capsys, monkeypatch):
    """In a terminal the CLI shows one kind of progress bar (tqdm): a count, a rate and an ETA."""
    monkeypatch.setattr("memlens.commands.check.progress_enabled", lambda *a: True)
    assert main(["check", str(valid_set)]) == 0
    err = capsys.readouterr().err
    assert "decoding images:" in err and "/6 [" in err  # count of a known total (refreshes are throttled)
    assert "img/s]" in err and "<" in err  # tqdm's "[elapsed<remaining, rate]" part
