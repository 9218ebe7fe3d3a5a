"""Data set layouts: csv, memcat, lamem, lnsim, folder; detection; the uniform table."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from memlens.data import Dataset, SplitHalves, detect_layout, load_dataset
from memlens.errors import ConfigError, DataError, ValidationError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MEMCAT_CSV = SHARED / "memcat" / "memcat_image_data.csv"
LNSIM_DEV = SHARED / "lnsim-dev"


def make_image(path: Path, size=(12, 8), seed=0, fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def write_table(path: Path, rows: list[dict], sep=",") -> Path:
    pd.DataFrame(rows).to_csv(path, index=False, sep=sep)
    return path


# --------------------------------------------------------------------------------------------- csv
@pytest.fixture
def csv_set(tmp_path: Path) -> Path:
    names = ["b/z.jpg", "a.png", "b/c/y.jpg", "x.jpg"]  # deliberately not sorted
    for i, n in enumerate(names):
        make_image(tmp_path / n, seed=i)
    rows = [
        {"image": n, "score": s, "category": c, "photographer": p, "n_resp": k}
        for n, s, c, p, k in zip(names, [0.5, 0.25, 1.0, 0.0], ["cat", "dog", "cat", "dog"],
                                 ["ann", "bob", "cy", "di"], [10, 11, 12, 13], strict=True)
    ]
    return write_table(tmp_path / "scores.csv", rows)


def test_csv_round_trip(csv_set: Path):
    ds = load_dataset(csv_set)
    assert isinstance(ds, Dataset) and ds.layout == "csv" and len(ds) == 4
    t = ds.table
    assert list(t.columns) == ["image_id", "path", "score", "category", "photographer", "n_resp"]
    assert t["image_id"].tolist() == ["b/z.jpg", "a.png", "b/c/y.jpg", "x.jpg"]  # source order kept
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in t["path"])
    assert [Path(p).relative_to(csv_set.parent).as_posix() for p in t["path"]] == t["image_id"].tolist()
    np.testing.assert_allclose(t["score"], [0.5, 0.25, 1.0, 0.0])
    assert t["category"].tolist() == ["cat", "dog", "cat", "dog"]
    assert t["n_resp"].tolist() == [10, 11, 12, 13]  # pass-through column keeps its type
    assert ds.has_scores and ds.halves is None
    assert ds.root == Path(os.path.abspath(csv_set.parent))
    s = ds.summary()
    assert s["n_images"] == 4 and s["categories"] == {"cat": 2, "dog": 2}
    assert s["score"]["mean"] == pytest.approx(0.4375)
    assert s["score"]["sd"] == pytest.approx(np.std([0.5, 0.25, 1.0, 0.0], ddof=1))
    assert (s["score"]["min"], s["score"]["max"]) == (0.0, 1.0)


def test_csv_folder_with_one_table_and_spec_reload(csv_set: Path):
    ds = load_dataset(csv_set.parent)
    assert ds.layout == "csv" and len(ds) == 4
    again = load_dataset(**ds.spec())
    pd.testing.assert_frame_equal(ds.table, again.table)
    rec = ds.to_record()  # what a run's dataset.json stores
    assert rec["layout"] == "csv" and rec["options"] == {} and rec["n_images"] == 4
    assert Path(rec["source"]).is_absolute()
    pd.testing.assert_frame_equal(load_dataset(rec["source"], rec["layout"], **rec["options"]).table, ds.table)


def test_csv_subset(csv_set: Path):
    ds = load_dataset(csv_set)
    sub = ds.subset(["x.jpg", "a.png"])
    assert sub.image_ids == ["x.jpg", "a.png"] and sub.scores.tolist() == [0.0, 0.25]
    with pytest.raises(DataError, match="not in the data set"):
        ds.subset(["nope.jpg"])


@pytest.mark.parametrize("image_header, score_header, cat_header", [
    ("image_id", "memorability", "class"),
    ("filename", "score", "category"),
    ("image_file", "memorability_score", "scene_category"),
    ("File", "Score", "Category"),  # case-insensitive
    ("path", "hit_rate", None),
])
def test_csv_column_autodetection(tmp_path: Path, image_header, score_header, cat_header):
    make_image(tmp_path / "i1.jpg")
    make_image(tmp_path / "i2.jpg", seed=1)
    rows = [{image_header: "i1.jpg", score_header: 0.3}, {image_header: "i2.jpg", score_header: 0.7}]
    if cat_header:
        rows[0][cat_header], rows[1][cat_header] = "a", "b"
    ds = load_dataset(write_table(tmp_path / "t.csv", rows))
    assert ds.image_ids == ["i1.jpg", "i2.jpg"]
    assert ds.scores.tolist() == [0.3, 0.7]
    assert ("category" in ds.table) == bool(cat_header)


def test_csv_flags_override_detection(tmp_path: Path):
    make_image(tmp_path / "p.jpg")
    make_image(tmp_path / "q.jpg", seed=1)
    rows = [{"image": "q.jpg", "pic": "p.jpg", "score": 0.9, "hr": 0.1, "grp": "g1"},
            {"image": "p.jpg", "pic": "q.jpg", "score": 0.8, "hr": 0.2, "grp": "g2"}]
    table = write_table(tmp_path / "t.csv", rows)
    ds = load_dataset(table, image_col="pic", score_col="hr", category_col="grp")
    assert ds.image_ids == ["p.jpg", "q.jpg"]
    assert ds.scores.tolist() == [0.1, 0.2]
    assert ds.table["category"].tolist() == ["g1", "g2"]
    # the unused columns named image/score pass through, renamed where they clash
    assert ds.table["image"].tolist() == ["q.jpg", "p.jpg"]
    assert ds.table["source_score"].tolist() == [0.9, 0.8]


def test_blank_categories_are_missing_not_a_category(tmp_path: Path, capsys):
    for i in range(4):
        make_image(tmp_path / f"{i}.jpg", seed=i)
    rows = [{"image": f"{i}.jpg", "score": 0.1 * i, "category": c} for i, c in enumerate(["a", " ", "", "b "])]
    ds = load_dataset(write_table(tmp_path / "t.csv", rows))
    assert ds.table["category"].isna().tolist() == [False, True, True, False]
    assert ds.table["category"].dropna().tolist() == ["a", "b"]
    assert any("2 image(s) have no category" in n for n in ds.notes)
    summary = ds.summary()
    assert summary["categories"] == {"a": 1, "b": 1} and summary["n_without_category"] == 2
    from memlens.cli import main

    assert main(["check", str(tmp_path / "t.csv")]) == 0
    assert "categories (2): a 1, b 1; 2 without a category" in capsys.readouterr().out


@pytest.mark.parametrize("scores,hint", [
    (["65.3", "80", "12.5", "40"], "the scores look like percentages (0 to 100)"),
    (["0,65", "0,8", "0,12", "0,4"], "4 scores use a decimal comma"),
    (["65.3%", "80%", "12.5 %", "40%"], "4 scores are written as percentages"),
])
def test_score_pattern_gets_one_hint(tmp_path: Path, scores, hint):
    from memlens.errors import ValidationError

    for i in range(4):
        make_image(tmp_path / f"{i}.jpg", seed=i)
    table = write_table(tmp_path / "t.csv", [{"image": f"{i}.jpg", "score": v} for i, v in enumerate(scores)])
    with pytest.raises(ValidationError) as err:
        load_dataset(table)
    lines = str(err.value).splitlines()
    assert sum(hint in line for line in lines) == 1 and len(lines) >= 5  # four rows + the hint


def test_csv_missing_flag_column_lists_columns(tmp_path: Path):
    make_image(tmp_path / "p.jpg")
    table = write_table(tmp_path / "t.csv", [{"image": "p.jpg", "score": 0.5}])
    with pytest.raises(ValidationError) as err:
        load_dataset(table, score_col="memo")
    text = "\n".join(err.value.lines())
    assert "'memo'" in text and "--score-col" in text and "columns found: image, score" in text


def test_csv_missing_image_column_lists_columns(tmp_path: Path):
    table = write_table(tmp_path / "t.csv", [{"what": "x", "score": 0.5}])
    with pytest.raises(ValidationError) as err:
        load_dataset(table)
    assert "no image-path column" in str(err.value) and "columns found: what, score" in str(err.value)


def test_csv_image_column_found_by_extension(tmp_path: Path):
    make_image(tmp_path / "p.jpg")
    table = write_table(tmp_path / "t.csv", [{"stimulus": "p.jpg", "score": 0.5}])
    assert load_dataset(table).image_ids == ["p.jpg"]


def test_tsv_and_semicolon_and_bom(tmp_path: Path):
    make_image(tmp_path / "p.jpg")
    tsv = write_table(tmp_path / "t.tsv", [{"image": "p.jpg", "score": 0.5}], sep="\t")
    assert load_dataset(tsv).scores.tolist() == [0.5]
    semi = tmp_path / "s" / "t.csv"
    semi.parent.mkdir()
    make_image(semi.parent / "p.jpg")
    semi.write_text("image;score\np.jpg;0.25\n")
    assert load_dataset(semi).scores.tolist() == [0.25]
    bom = tmp_path / "b" / "t.csv"
    bom.parent.mkdir()
    make_image(bom.parent / "p.jpg")
    bom.write_bytes("\ufeffimage,score\np.jpg,0.75\n".encode())
    assert load_dataset(bom).scores.tolist() == [0.75]
    # Excel's "sep=;" first line: it names the separator, the header follows, line numbers stay the file's
    semi.write_text("sep=;\nimage;score;note\np.jpg;0.25;a,b\n")
    ds = load_dataset(semi)
    assert ds.scores.tolist() == [0.25] and ds.table["note"].tolist() == ["a,b"]
    semi.write_bytes("image\tscore\r\np.jpg\t0.5\r\n".encode("utf-16"))  # Excel's "Unicode text": UTF-16 + BOM
    assert load_dataset(semi).scores.tolist() == [0.5]
    semi.write_text("sep=;\nimage;score\np.jpg;2.5\n")
    with pytest.raises(ValidationError, match=r"score 2\.5 outside \[0, 1\] \(t\.csv line 3\)"):
        load_dataset(semi)


def test_csv_without_scores(tmp_path: Path):
    make_image(tmp_path / "p.jpg")
    ds = load_dataset(write_table(tmp_path / "t.csv", [{"image": "p.jpg", "note": "x"}]))
    assert not ds.has_scores and ds.scores is None and ds.summary()["score"] is None


def test_csv_halves_beside_table(tmp_path: Path):
    ids = ["images/a.jpg", "images/b.jpg", "images/c.jpg"]
    for i, n in enumerate(ids):
        make_image(tmp_path / n, seed=i)
    # the table lists the images in another order than the halves file
    write_table(tmp_path / "scores.csv", [{"image": n, "score": 0.5} for n in ids[::-1]])
    h1 = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    np.savez(tmp_path / "split_halves.npz", image=np.array(ids), half1=h1, half2=h1 + 0.1)
    ds = load_dataset(tmp_path / "scores.csv")
    assert ds.halves is not None and list(ds.halves.image_ids) == ids[::-1]
    np.testing.assert_allclose(ds.halves.half1[:, 0], [0.3, 0.6])


def test_load_dataset_raises_with_every_problem(tmp_path: Path):
    make_image(tmp_path / "ok.jpg")
    rows = [{"image": "ok.jpg", "score": 0.5}, {"image": "gone.jpg", "score": 0.5},
            {"image": "ok.jpg", "score": 0.2}, {"image": "../out.jpg", "score": "high"}]
    with pytest.raises(ValidationError) as err:
        load_dataset(write_table(tmp_path / "t.csv", rows))
    lines = err.value.lines()
    assert "4 problems" in lines[0]
    body = "\n".join(lines[1:])
    assert "gone.jpg: missing file" in body and "ok.jpg: duplicate image id" in body
    assert "../out.jpg: path escapes the data root" in body and "non-numeric score 'high'" in body


def test_bad_options_raise_config_error(csv_set: Path):
    with pytest.raises(ConfigError, match="unknown layout"):
        load_dataset(csv_set, layout="xls")
    with pytest.raises(ConfigError, match="score variant"):
        load_dataset(csv_set, score_variant="both")


# ------------------------------------------------------------------------------------------ memcat
def _memcat_rows(n: int = 30) -> pd.DataFrame:
    if not MEMCAT_CSV.is_file():
        pytest.skip(f"MemCat score table absent: {MEMCAT_CSV}")
    full = pd.read_csv(MEMCAT_CSV, index_col=0)
    # rows from every category, a few per subcategory
    return full.groupby("category", sort=True).head(n // 5).reset_index(drop=True)


@pytest.fixture
def memcat_set(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    rows = _memcat_rows()
    root = tmp_path / "memcat"
    for i, r in rows.iterrows():
        make_image(root / r["category"] / r["subcategory"] / r["image_file"], seed=i)
    # write the table as the MemCat authors do: R's quoted header with an unnamed row-number column
    out = rows.copy()
    out.insert(0, "", np.arange(1, len(out) + 1))
    out.to_csv(root / "memcat_image_data.csv", index=False)
    return root, rows


def test_memcat_round_trip(memcat_set):
    root, rows = memcat_set
    assert detect_layout(root) == "memcat" and detect_layout(root / "memcat_image_data.csv") == "memcat"
    ds = load_dataset(root)
    assert ds.layout == "memcat" and len(ds) == len(rows) == 30
    t = ds.table
    expected_ids = [f"{c}/{s}/{f}" for c, s, f in zip(rows["category"], rows["subcategory"], rows["image_file"],
                                                       strict=True)]
    assert t["image_id"].tolist() == expected_ids
    np.testing.assert_allclose(t["score"], rows["memorability_w_fa_correction"])
    assert t["category"].tolist() == rows["category"].tolist()
    assert t["subcategory"].tolist() == rows["subcategory"].tolist()
    # both score variants and the other columns pass through; the row-number column is dropped
    for col in ("memorability_wo_fa_correction", "memorability_w_fa_correction", "H", "FA", "n_resp", "source"):
        assert col in t.columns
    assert "image_file" not in t.columns and not any(c.startswith("Unnamed") or c == "" for c in t.columns)
    assert list(t.columns[:5]) == ["image_id", "path", "score", "category", "subcategory"]
    assert sorted(ds.summary()["categories"]) == ["animal", "food", "landscape", "sports", "vehicle"]
    assert any("false-alarm corrected" in n for n in ds.notes)


def test_memcat_uncorrected_variant_and_file_source(memcat_set):
    root, rows = memcat_set
    ds = load_dataset(root / "memcat_image_data.csv", score_variant="uncorrected")
    np.testing.assert_allclose(ds.table["score"], rows["memorability_wo_fa_correction"])
    assert not np.allclose(ds.table["score"], rows["memorability_w_fa_correction"])
    assert ds.root == Path(os.path.abspath(root))


def test_memcat_images_found_by_name_anywhere(memcat_set):
    root, rows = memcat_set
    # move one image to another folder: it is still found by its file name
    first = rows.iloc[0]
    src = root / first["category"] / first["subcategory"] / first["image_file"]
    dst = root / "elsewhere" / "deep" / first["image_file"]
    dst.parent.mkdir(parents=True)
    src.rename(dst)
    ds = load_dataset(root)
    assert ds.image_ids[0] == f"elsewhere/deep/{first['image_file']}"


def test_memcat_missing_image_is_reported(memcat_set):
    root, rows = memcat_set
    r = rows.iloc[3]
    (root / r["category"] / r["subcategory"] / r["image_file"]).unlink()
    with pytest.raises(ValidationError) as err:
        load_dataset(root)
    assert len(err.value.problems) == 1
    p = err.value.problems[0]
    assert p.where == f"{r['category']}/{r['subcategory']}/{r['image_file']}" and "missing file" in p.reason


# ------------------------------------------------------------------------------------------- lamem
@pytest.fixture
def lamem_set(tmp_path: Path) -> Path:
    root = tmp_path / "lamem"
    names = [f"{i:08d}.jpg" for i in range(1, 7)]
    for i, n in enumerate(names):
        make_image(root / "images" / n, seed=i)
    scores = {n: round(0.1 * (i + 1), 2) for i, n in enumerate(names)}
    split = root / "splits"
    split.mkdir()
    files = {"train_1": names[:3], "val_1": names[3:4], "test_1": names[4:], "train_2": names[2:]}
    for stem, members in files.items():
        (split / f"{stem}.txt").write_text("".join(f"{n} {scores[n]}\n" for n in members))
    return root


def test_lamem_all_splits_default(lamem_set: Path):
    assert detect_layout(lamem_set) == "lamem"
    ds = load_dataset(lamem_set)
    assert ds.layout == "lamem" and len(ds) == 6
    # order: train_1, train_2, val_1, test_1 by first appearance; each image once
    assert ds.image_ids == [f"images/{i:08d}.jpg" for i in (1, 2, 3, 4, 5, 6)]
    np.testing.assert_allclose(ds.scores, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert ds.table["split"].tolist() == ["train_1"] * 3 + ["train_2"] * 3


def test_lamem_chosen_splits(lamem_set: Path):
    ds = load_dataset(lamem_set, splits=["test_1", "val_1.txt"])
    assert ds.image_ids == ["images/00000005.jpg", "images/00000006.jpg", "images/00000004.jpg"]
    assert ds.table["split"].tolist() == ["test_1", "test_1", "val_1"]
    assert ds.spec()["splits"] == ["test_1", "val_1.txt"] and ds.spec()["layout"] == "lamem"
    assert ds.to_record()["options"] == {"splits": ["test_1", "val_1.txt"]}
    pd.testing.assert_frame_equal(load_dataset(**ds.spec()).table, ds.table)


def test_lamem_unknown_split_and_conflicting_scores(lamem_set: Path):
    with pytest.raises(ValidationError, match=r"no split file train_9\.txt \(available: train_1, train_2, "
                                              r"val_1, test_1\)"):
        load_dataset(lamem_set, splits=["train_9"])
    (lamem_set / "splits" / "val_2.txt").write_text("00000001.jpg 0.9\nbadline\n")
    with pytest.raises(ValidationError) as err:
        load_dataset(lamem_set)
    text = "\n".join(err.value.lines())
    assert "conflicting scores 0.1 and 0.9" in text and "expected 'filename score'" in text


def test_lamem_comment_lines_are_skipped(lamem_set: Path):
    """A '# filename score' header is a comment, not a missing image '#' with a non-numeric score."""
    path = lamem_set / "splits" / "val_1.txt"
    path.write_text("# filename score\n" + path.read_text() + "  # trailing note\n")
    ds = load_dataset(lamem_set)
    assert len(ds) == 6 and "images/#" not in ds.image_ids


# ------------------------------------------------------------------------------------------- lnsim
@pytest.fixture
def lnsim_set(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    from scipy.io import savemat

    root = tmp_path / "LNSIM"
    n = 5
    for i in range(n):
        make_image(root / "Image_data" / f"{i + 1:04d}.jpg", seed=i)
    rng = np.random.default_rng(3)
    h1, h2 = rng.uniform(0.2, 0.9, (4, n)), rng.uniform(0.2, 0.9, (4, n))
    (root / "Random_splits").mkdir()
    savemat(root / "Random_splits" / "subject_hrs1.mat", {"subject_hrs1": h1})
    savemat(root / "Random_splits" / "subject_hrs2.mat", {"subject_hrs2": h2})
    return root, h1, h2


def test_lnsim_round_trip(lnsim_set):
    root, h1, h2 = lnsim_set
    assert detect_layout(root) == "lnsim"
    ds = load_dataset(root)
    assert ds.layout == "lnsim" and len(ds) == 5
    assert ds.image_ids == [f"Image_data/{i:04d}.jpg" for i in range(1, 6)]
    np.testing.assert_allclose(ds.scores, ((h1 + h2) / 2).mean(axis=0))
    assert isinstance(ds.halves, SplitHalves) and list(ds.halves.image_ids) == ds.image_ids
    np.testing.assert_allclose(ds.halves.half1, h1)
    np.testing.assert_allclose(ds.halves.half2, h2)
    assert ds.subset(["Image_data/0003.jpg"]).halves.half1[:, 0].tolist() == h1[:, 2].tolist()


def test_lnsim_missing_mat_and_image(lnsim_set):
    root, _, _ = lnsim_set
    (root / "Image_data" / "0002.jpg").unlink()
    with pytest.raises(ValidationError, match=r"Image_data/0002\.jpg: missing file"):
        load_dataset(root)
    (root / "Random_splits" / "subject_hrs2.mat").unlink()
    with pytest.raises(ValidationError, match="subject_hrs2.mat"):
        load_dataset(root, layout="lnsim")


@pytest.mark.shared
def test_lnsim_dev_csv_has_halves():
    if not (LNSIM_DEV / "scores.csv").is_file():
        pytest.skip(f"lnsim-dev absent: {LNSIM_DEV}")
    ds = load_dataset(LNSIM_DEV / "scores.csv")
    assert len(ds) == 1974 and ds.halves is not None and ds.halves.n_splits == 25
    np.testing.assert_allclose(ds.halves.scores(), ds.scores, atol=1e-5)


# ------------------------------------------------------------------------------------------ folder
def test_folder_round_trip(tmp_path: Path):
    root = tmp_path / "imgs"
    for i, n in enumerate(["b.jpg", "a/z.PNG", "a/b/c.jpeg", ".hidden/x.jpg", ".dot.jpg", "Ünïcode ö.jpg"]):
        make_image(root / n, seed=i, fmt="PNG" if n.endswith("PNG") else None)
    (root / "notes.txt").write_text("not an image")
    assert detect_layout(root) == "folder"
    ds = load_dataset(root)
    assert ds.layout == "folder" and not ds.has_scores
    assert ds.image_ids == ["a/b/c.jpeg", "a/z.PNG", "b.jpg", "Ünïcode ö.jpg"]
    assert list(ds.table.columns) == ["image_id", "path"]


def test_empty_folder_is_an_error(tmp_path: Path):
    with pytest.raises(ValidationError, match="empty collection"):
        load_dataset(tmp_path)


# --------------------------------------------------------------------------------------- detection
def test_detect_layout_rules(tmp_path: Path):
    with pytest.raises(DataError, match="no such file"):
        detect_layout(tmp_path / "nope")
    (tmp_path / "one").mkdir()
    write_table(tmp_path / "one" / "a.csv", [{"image": "x.jpg"}])
    assert detect_layout(tmp_path / "one") == "csv"
    assert detect_layout(tmp_path / "one" / "a.csv") == "csv"
    write_table(tmp_path / "one" / "b.tsv", [{"image": "x.jpg"}], sep="\t")
    with pytest.raises(DataError, match=r"several tables \(a\.csv, b\.tsv\)"):
        detect_layout(tmp_path / "one")
    img = make_image(tmp_path / "pic.jpg")
    with pytest.raises(DataError, match="not a table"):
        detect_layout(img)
    memcat_file = tmp_path / "m" / "memcat_image_data.csv"
    memcat_file.parent.mkdir()
    memcat_file.write_text("image_file\n")
    assert detect_layout(memcat_file) == "memcat" and detect_layout(memcat_file.parent) == "memcat"


def test_every_registered_layout_is_detected_and_offered_by_the_cli():
    """Registering a layout means: the registry, the detection order and the CLI's --layout choices."""
    import click

    from memlens.commands.check import check
    from memlens.commands.train import train
    from memlens.data.layouts import DETECTION_ORDER, LAYOUTS, get_layout

    assert sorted(DETECTION_ORDER) == sorted(LAYOUTS) and len(set(LAYOUTS)) == len(LAYOUTS)
    assert DETECTION_ORDER[-1] == "folder"  # matches any folder: the last rule
    assert [get_layout(name).name for name in LAYOUTS] == list(LAYOUTS)
    with pytest.raises(ConfigError, match="unknown layout"):
        get_layout("nope")
    for command in (check, train):
        option = next(p for p in command.params if p.name == "layout")
        assert isinstance(option.type, click.Choice) and list(option.type.choices) == ["auto", *LAYOUTS]


def test_a_layout_is_one_module(tmp_path: Path, monkeypatch):
    """The registry finds every module that defines LAYOUT, placed by its order and detection rank."""
    from memlens.data.layouts.registry import discover_layouts

    pkg = tmp_path / "extra_layouts_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("X = 1\n")  # no LAYOUT: not a layout
    for name, order in (("zeta", 1), ("alpha", 2)):
        (pkg / f"{name}.py").write_text(
            "from memlens.data.layouts.reader import Layout\n"
            f"LAYOUT = Layout({name!r}, detect=lambda p: False, read=lambda s, o, pr: None, order={order})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [lay.name for lay in discover_layouts(pkg, "extra_layouts_pkg")] == ["zeta", "alpha"]
    # the package's own: the six built-in layouts, and none of its shared modules
    from memlens.data.layouts import LAYOUTS

    assert LAYOUTS == ("csv", "memcat", "lamem", "lnsim", "folder", "parquet")
