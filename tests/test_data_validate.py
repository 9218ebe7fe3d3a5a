"""validate_dataset: every bad-input case is reported (never raised), accepted conversions are noted."""

from __future__ import annotations

import os
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from memlens.data import ValidationReport, validate_dataset
from memlens.errors import Problem, ValidationError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LNSIM_DEV = SHARED / "lnsim-dev"


def make_image(path: Path, size=(16, 12), seed=0, mode="RGB", fmt=None, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(arr)
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path, format=fmt, **save)
    return path


def png_with_size(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (the data is one pixel): a decompression bomb stand-in."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00"))
    path.write_bytes(data + chunk(b"IEND", b""))
    return path


def table(root: Path, rows: list[tuple], name="t.csv") -> Path:
    pd.DataFrame(rows, columns=["image", "score"]).to_csv(root / name, index=False)
    return root / name


def only_problem(report: ValidationReport) -> Problem:
    assert not report.ok
    assert len(report.problems) == 1, report.lines()
    return report.problems[0]


# ----------------------------------------------------------------------------------- image problems
def test_valid_set_is_ok_with_summary(tmp_path: Path):
    for i in range(3):
        make_image(tmp_path / f"{i}.jpg", seed=i)
    rows = [("0.jpg", 0.2), ("1.jpg", 0.4), ("2.jpg", 0.9)]
    pd.DataFrame({"image": [r[0] for r in rows], "score": [r[1] for r in rows], "category": ["a", "b", "a"]}
                 ).to_csv(tmp_path / "t.csv", index=False)
    rep = validate_dataset(tmp_path / "t.csv")
    assert rep.ok and rep.problems == [] and rep.layout == "csv"
    s = rep.summary
    assert s["n_images"] == 3 and s["categories"] == {"a": 2, "b": 1}
    assert s["score"]["mean"] == pytest.approx(0.5) and s["score"]["sd"] == pytest.approx(np.std([.2, .4, .9], ddof=1))
    assert (s["score"]["min"], s["score"]["max"]) == (0.2, 0.9)
    rep.raise_for_problems()  # nothing to raise


def _bad_file(kind: str, root: Path) -> tuple[str, str]:
    """Create one broken image of ``kind`` in ``root``; return (name, expected words in the reason)."""
    good = make_image(root / "_src.jpg", size=(64, 48))
    data = good.read_bytes()
    good.unlink()
    if kind == "zero":
        (root / "z.jpg").write_bytes(b"")
        return "z.jpg", "zero-byte file"
    if kind == "truncated-jpeg":
        (root / "t.jpg").write_bytes(data[: len(data) // 2])
        return "t.jpg", "truncated image"
    if kind == "truncated-png":
        png = make_image(root / "_p.png", size=(64, 48)).read_bytes()
        (root / "_p.png").unlink()
        (root / "t.png").write_bytes(png[: len(png) * 2 // 3])
        return "t.png", "truncated image"
    if kind == "corrupt":
        (root / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
        return "c.jpg", "corrupt image"
    if kind == "jpeg-header-then-garbage":  # the decoder raises OSError("Truncated File Read"): not an OS error
        (root / "g.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 3)
        return "g.jpg", "corrupt image: starts like a JPEG file but cannot be decoded"
    if kind == "not-image":
        (root / "n.jpg").write_text("this is a text file\n")
        return "n.jpg", "not an image file"
    if kind == "bomb-limit":
        make_image(root / "big.png", size=(100, 80))
        return "big.png", "exceeds the decompression-bomb limit of 5,000"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["zero", "truncated-jpeg", "truncated-png", "corrupt", "jpeg-header-then-garbage",
                                  "not-image", "bomb-limit"])
def test_broken_image_is_reported(tmp_path: Path, kind: str):
    name, words = _bad_file(kind, tmp_path)
    make_image(tmp_path / "fine.jpg", size=(60, 50))
    rep = validate_dataset(table(tmp_path, [(name, 0.5), ("fine.jpg", 0.5)]), max_pixels=5_000)
    p = only_problem(rep)
    assert p.where == name and words in p.reason
    assert rep.dataset is not None and rep.dataset.image_ids == ["fine.jpg"]


def test_pil_decompression_bomb_error_and_warning_are_caught(tmp_path: Path):
    png_with_size(tmp_path / "huge.png", 20_000, 20_000)  # > 2 x PIL's limit: PIL raises
    png_with_size(tmp_path / "large.png", 11_000, 10_000)  # > PIL's limit: PIL warns; > our default limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a leaked DecompressionBombWarning would fail here
        rep = validate_dataset(tmp_path)
    assert rep.layout == "folder"
    reasons = {p.where: p.reason for p in rep.problems}
    assert set(reasons) == {"huge.png", "large.png"}
    assert all("decompression-bomb limit" in r for r in reasons.values())
    assert "110,000,000 pixels" in reasons["large.png"]


# ------------------------------------------------------------------------------------- table problems
def test_missing_file(tmp_path: Path):
    make_image(tmp_path / "a.jpg")
    p = only_problem(validate_dataset(table(tmp_path, [("a.jpg", 0.1), ("sub/gone.jpg", 0.2)])))
    assert p == Problem("sub/gone.jpg", "missing file (t.csv line 3)")


def test_duplicate_ids(tmp_path: Path):
    make_image(tmp_path / "a.jpg")
    make_image(tmp_path / "b.jpg", seed=1)
    rep = validate_dataset(table(tmp_path, [("a.jpg", 0.1), ("b.jpg", 0.2), ("./a.jpg", 0.3)]))
    p = only_problem(rep)
    assert p.where == "a.jpg" and "duplicate image id: listed 2 times (t.csv line 2; t.csv line 4)" in p.reason


@pytest.mark.parametrize("value, words", [
    ("", "missing score"), ("nan", "missing score (NaN)"), ("NA", "missing score"),
    ("abc", "non-numeric score 'abc'"), ("0,5", "non-numeric score '0,5'"),
    ("1.5", "score 1.5 outside [0, 1]"), ("-0.2", "score -0.2 outside [0, 1]"), ("inf", "outside [0, 1]"),
])
def test_bad_scores(tmp_path: Path, value: str, words: str):
    make_image(tmp_path / "a.jpg")
    make_image(tmp_path / "b.jpg", seed=1)
    (tmp_path / "t.csv").write_text(f'image,score\na.jpg,0.5\nb.jpg,"{value}"\n')
    p = only_problem(validate_dataset(tmp_path / "t.csv"))
    assert p.where == "b.jpg" and words in p.reason and "t.csv line 3" in p.reason


def test_paths_escaping_the_root(tmp_path: Path):
    root = tmp_path / "data"
    make_image(root / "ok.jpg")
    outside = make_image(tmp_path / "outside.jpg", seed=2)
    os.symlink(outside, root / "link.jpg")
    make_image(root / "inner" / "real.jpg", seed=3)
    os.symlink(root / "inner" / "real.jpg", root / "innerlink.jpg")  # a symlink inside the root is fine
    rows = [("ok.jpg", 0.1), ("../outside.jpg", 0.2), (str(outside), 0.3), ("link.jpg", 0.4),
            (str(root / "ok.jpg"), 0.5), ("innerlink.jpg", 0.6), ("inner/../inner/real.jpg", 0.7)]
    rep = validate_dataset(table(root, rows))
    got = {p.where: p.reason for p in rep.problems}
    assert set(got) == {"../outside.jpg", str(outside), "link.jpg", "ok.jpg"}
    assert "path escapes the data root" in got["../outside.jpg"]
    assert "path escapes the data root" in got[str(outside)]
    assert "symlink points outside the data root" in got["link.jpg"]
    # the absolute path inside the root is accepted (and duplicates ok.jpg); "a/../a/b" is normalised
    assert "duplicate image id: listed 2 times" in got["ok.jpg"]
    assert rep.dataset.image_ids == ["innerlink.jpg", "inner/real.jpg"]


def test_symlink_out_of_folder_layout(tmp_path: Path):
    root = tmp_path / "imgs"
    make_image(root / "a.jpg")
    outside = make_image(tmp_path / "secret.jpg", seed=1)
    os.symlink(outside, root / "b.jpg")
    p = only_problem(validate_dataset(root))
    assert p.where == "b.jpg" and "symlink points outside the data root" in p.reason


def test_missing_required_columns(tmp_path: Path):
    (tmp_path / "t.csv").write_text("picture_name,rating\nx,0.5\n")  # no column of image file names
    p = only_problem(validate_dataset(tmp_path / "t.csv"))
    assert "missing required column" in p.reason and "columns found: picture_name, rating" in p.reason
    p = only_problem(validate_dataset(tmp_path / "t.csv", image_col="picture_name", score_col="memo"))
    assert "'memo'" in p.reason and "columns found: picture_name, rating" in p.reason


def test_memcat_missing_score_column(tmp_path: Path):
    (tmp_path / "memcat_image_data.csv").write_text("image_file,category,subcategory,memorability_w_fa_correction\n"
                                                    "a.jpg,animal,cat,0.5\n")
    make_image(tmp_path / "animal" / "cat" / "a.jpg")
    assert validate_dataset(tmp_path).ok
    p = only_problem(validate_dataset(tmp_path, score_variant="uncorrected"))
    assert "memorability_wo_fa_correction" in p.reason and "--score-variant" in p.reason


def test_unreadable_encoding(tmp_path: Path):
    make_image(tmp_path / "café.jpg")
    (tmp_path / "t.csv").write_bytes("image,score\ncafé.jpg,0.5\n".encode("latin-1"))
    p = only_problem(validate_dataset(tmp_path / "t.csv"))
    assert p.where == str(tmp_path / "t.csv")
    assert "unreadable table encoding: not UTF-8 (byte 0xe9" in p.reason and "utf-8-sig" in p.reason


def test_binary_table(tmp_path: Path):
    (tmp_path / "t.csv").write_bytes(b"PK\x03\x04\x00\x00binary")
    assert "not a text table" in only_problem(validate_dataset(tmp_path / "t.csv")).reason


@pytest.mark.parametrize("content", ["", "image,score\n"])
def test_empty_table(tmp_path: Path, content: str):
    (tmp_path / "t.csv").write_text(content)
    assert "empty" in only_problem(validate_dataset(tmp_path / "t.csv")).reason


def test_empty_folder_and_missing_source(tmp_path: Path):
    (tmp_path / "readme.txt").write_text("no images here")
    p = only_problem(validate_dataset(tmp_path))
    assert "empty collection: no images found" in p.reason
    p = only_problem(validate_dataset(tmp_path / "nope"))
    assert p == Problem(str(tmp_path / "nope"), "no such file or folder")


def test_every_problem_in_one_pass(tmp_path: Path):
    """A dozen broken inputs: one problem each, nothing raised, the good images kept."""
    root = tmp_path / "data"
    root.mkdir()
    expected = {}
    for kind in ("zero", "truncated-jpeg", "truncated-png", "corrupt", "not-image"):
        name, words = _bad_file(kind, root)
        expected[name] = words
    png_with_size(root / "bomb.png", 12_000, 10_000)
    expected["bomb.png"] = "decompression-bomb"
    for i in range(6):
        make_image(root / f"good{i}.jpg", seed=i)
    outside = make_image(tmp_path / "outside.jpg")
    os.symlink(outside, root / "escape.jpg")
    expected["escape.jpg"] = "symlink points outside"
    rows = [(n, 0.5) for n in expected] + [
        ("good0.jpg", 0.1), ("good1.jpg", "nan"), ("good2.jpg", "high"), ("good3.jpg", 1.5),
        ("missing.jpg", 0.5), ("../up.jpg", 0.5), ("good0.jpg", 0.2), ("good4.jpg", 0.3), ("good5.jpg", 0.4),
    ]
    expected.update({"good1.jpg": "missing score (NaN)", "good2.jpg": "non-numeric score", "good3.jpg": "outside [0, 1]",
                     "missing.jpg": "missing file", "../up.jpg": "path escapes", "good0.jpg": "duplicate image id"})
    rep = validate_dataset(table(root, rows))
    assert len(rep.problems) == len(expected) == 13, rep.lines()
    got = {p.where: p.reason for p in rep.problems}
    assert set(got) == set(expected)
    for where, words in expected.items():
        assert words in got[where], (where, got[where])
    assert rep.dataset.image_ids == ["good4.jpg", "good5.jpg"]  # good0 is a duplicate: flagged too
    with pytest.raises(ValidationError) as err:
        rep.raise_for_problems()
    assert err.value.lines()[0].endswith("13 problems") and len(err.value.lines()) == 14


# ------------------------------------------------------------------------------------- accepted inputs
def test_accepted_conversions_are_noted(tmp_path: Path):
    root = tmp_path / "imgs"
    make_image(root / "rgb.jpg")
    make_image(root / "gray1.jpg", mode="L")
    make_image(root / "gray2.png", mode="L", seed=1)
    make_image(root / "gray3.png", mode="1", seed=2)
    make_image(root / "palette.gif", mode="P")
    make_image(root / "rgba.png", mode="RGBA")
    make_image(root / "la.png", mode="LA")
    make_image(root / "cmyk.jpg", mode="CMYK")
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(root / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    make_image(root / "rotated.jpg", exif=exif)
    make_image(root / "UPPER.JPG", seed=3)
    make_image(root / "naïve 画像.png", seed=4)
    rep = validate_dataset(root)
    assert rep.ok, rep.lines()
    assert rep.summary["n_images"] == 12
    assert rep.conversions == {"grayscale": 3, "palette": 1, "alpha": 2, "CMYK": 1, "16-bit": 1, "exif": 1,
                               "uppercase-ext": 1, "non-ascii": 1}
    notes = "\n".join(rep.notes)
    for text in ("3 grayscale images converted to RGB", "1 palette image converted to RGB",
                 "2 images with transparency composited on white", "1 CMYK image converted to RGB",
                 "1 16-bit image scaled to 8 bits", "1 EXIF-rotated image turned upright",
                 "1 file name with an upper-case extension", "1 file name with non-ASCII characters"):
        assert text in notes


def test_table_only_mode_skips_decoding(tmp_path: Path):
    (tmp_path / "broken.jpg").write_text("not really")
    rep = validate_dataset(table(tmp_path, [("broken.jpg", 0.5)]), check_images=False)
    assert rep.ok and any("not decoded" in n for n in rep.notes)


def test_report_to_dict(tmp_path: Path):
    make_image(tmp_path / "a.jpg")
    d = validate_dataset(table(tmp_path, [("a.jpg", 0.5), ("b.jpg", 0.5)])).to_dict()
    assert d["ok"] is False and d["n_problems"] == 1
    assert d["problems"] == [{"where": "b.jpg", "reason": "missing file (t.csv line 3)"}]
    assert d["summary"]["n_images"] == 1


@pytest.mark.shared
def test_lnsim_dev_checks_fast():
    if not (LNSIM_DEV / "scores.csv").is_file():
        pytest.skip(f"lnsim-dev absent: {LNSIM_DEV}")
    t0 = time.perf_counter()
    rep = validate_dataset(LNSIM_DEV / "scores.csv")
    elapsed = time.perf_counter() - t0
    assert rep.ok, rep.lines()[:5]
    assert rep.summary["n_images"] == 1974 and rep.summary["has_halves"]
    assert 0.55 < rep.summary["score"]["mean"] < 0.65
    assert elapsed < 30, f"validation took {elapsed:.1f} s"
