"""How the parquet layout opens its files: no module-level cache of open files (a file rewritten under its name
is read as it is now), one reader per thread (a ParquetFile is not safe to share between threads: two `check`
threads reading row groups of one shared file deadlocked in Arrow's read cache), files closed after reading,
and a file that cannot be read is one problem line per image, not an internal error."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'memlens[ray]')")
pq = pytest.importorskip("pyarrow.parquet")

from memlens.cli import main  # noqa: E402
from memlens.data import load_dataset, validate_dataset  # noqa: E402
from memlens.data.layouts import parquet as layout  # noqa: E402
from memlens.scoring.sources import located_batches  # noqa: E402


def _png(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _write(path: Path, values: list[int], row_group_size: int | None = None) -> Path:
    pq.write_table(pa.table({"image_id": [f"v{v}" for v in values], "image": [_png(v) for v in values],
                             "score": [v / 255 for v in values]}), path, row_group_size=row_group_size)
    return path


def _pixels(ds) -> list[int]:
    return layout.load_located(ds.table["path"].tolist(), 8)[:, 0, 0, 0].tolist()


def test_a_file_rewritten_under_its_name_is_read_as_it_is_now(tmp_path, capsys):
    """In one Python session: load, rewrite the file in place with other rows, load again (the old module
    cache served the first footer with the new bytes: 'Unexpected end of stream')."""
    path = _write(tmp_path / "set.parquet", [10, 20])
    ds = load_dataset(path)
    assert ds.table["image_id"].tolist() == ["v10", "v20"] and _pixels(ds) == [10, 20]
    _write(path, [100, 150, 200])
    ds = load_dataset(path)
    assert ds.table["image_id"].tolist() == ["v100", "v150", "v200"] and _pixels(ds) == [100, 150, 200]
    assert main(["check", str(path), "--layout", "parquet"]) == 0
    assert "3 images" in capsys.readouterr().out


@pytest.fixture
def opened(monkeypatch):
    """Every ParquetFile the layout opens, in order."""
    files = []
    real = layout.open_parquet_file

    def recording(uri, footer=None):
        pf = real(uri, footer)
        files.append((uri, pf))
        return pf

    monkeypatch.setattr(layout, "open_parquet_file", recording)
    return files


def test_a_scan_in_order_opens_each_file_once_and_closes_it(tmp_path, opened):
    folder = tmp_path / "set"
    folder.mkdir()
    _write(folder / "a.parquet", list(range(0, 9)), row_group_size=3)
    _write(folder / "b.parquet", list(range(9, 15)), row_group_size=3)
    ds = load_dataset(folder)
    assert all(pf.closed for _, pf in opened)  # reading the table: every file closed after
    opened.clear()
    batches = list(located_batches(ds.table["image_id"].tolist(), ds.table["path"].tolist(), 8, None, 4))
    assert [b[0] for b in batches] == [ds.table["image_id"].tolist()[k:k + 4] for k in range(0, 15, 4)]
    pixels = np.concatenate([b[1][:, 0, 0, 0].numpy() for b in batches])
    np.testing.assert_allclose(pixels * 255, np.arange(15), atol=1e-4)
    assert [Path(uri).name for uri, _ in opened] == ["a.parquet", "b.parquet"]
    assert all(pf.closed for _, pf in opened)


def test_check_threads_do_not_share_a_reader(tmp_path, monkeypatch):
    path = _write(tmp_path / "set.parquet", list(range(40)), row_group_size=4)
    users: dict[int, set[int]] = {}
    real = layout.LocatedReader.image

    def recording(self, loc):
        users.setdefault(id(self), set()).add(threading.get_ident())
        return real(self, loc)

    monkeypatch.setattr(layout.LocatedReader, "image", recording)
    report = validate_dataset(path, n_jobs=2)
    assert report.ok and len(report.dataset) == 40
    assert users and all(len(threads) == 1 for threads in users.values())
    assert sum(1 for _ in users) <= 2  # one reader per thread of the pool, not one per image


def test_a_row_group_that_cannot_be_read_is_one_line_per_image(tmp_path, capsys):
    """A damaged page header in the image column of the second row group: its three images are reported,
    the other three pass, no traceback, exit 1."""
    path = _write(tmp_path / "set.parquet", [10, 20, 30, 40, 50, 60], row_group_size=3)
    col = pq.ParquetFile(path).metadata.row_group(1).column(1)
    assert col.path_in_schema == "image"
    raw = bytearray(path.read_bytes())
    at = col.dictionary_page_offset or col.data_page_offset
    raw[at:at + 8] = b"\xff" * 8
    path.write_bytes(bytes(raw))
    assert main(["check", str(path), "--layout", "parquet"]) == 1
    out = capsys.readouterr()
    text = out.out + out.err
    bad = [line for line in text.splitlines() if "cannot read" in line]
    assert sorted(line.split(":")[0] for line in bad) == ["v40", "v50", "v60"], text
    assert "3 problems found" in text and "Traceback" not in text and "internal error" not in text


def test_the_whole_pipeline_on_a_parquet_data_set_equals_the_image_files(tmp_path_factory):
    """`memlens run DATA.parquet` (images as bytes in Parquet cells) trains, scores, fits the predictor,
    explains and reports with the numbers of the same images as files: the stages that read images by path
    read the copies memlens train wrote under RUN/images, and the run still records the Parquet data set."""
    import contextlib
    import json
    import shutil

    import pandas as pd

    from _fake_run import REAL_RUN_ARGS, real_run

    folder = real_run(tmp_path_factory)
    t = load_dataset(folder.data).table
    # the Parquet file in a folder with the demo set's experience/ folder, found as for the folder run
    base = tmp_path_factory.mktemp("parquet_run")
    shutil.copytree(folder.data / "experience", base / "data" / "experience")
    source = base / "data" / "set.parquet"
    pq.write_table(pa.table({"image_id": t["image_id"].tolist(), "image": [Path(p).read_bytes() for p in t["path"]],
                             "score": t["score"].tolist(), "category": t["category"].tolist()}), source,
                   row_group_size=7)
    run = base / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = main(["run", str(source), "--out", str(run), *REAL_RUN_ARGS])
    assert rc == 0, out.getvalue()[-3000:]
    a, b = pd.read_csv(folder.run / "per_image.csv"), pd.read_csv(run / "per_image.csv")
    assert b["image_id"].tolist() == a["image_id"].tolist()
    numbers = [c for c in a.columns if c.startswith(("recon_", "distinctiveness")) and a[c].dtype.kind == "f"]
    assert "recon_mse" in numbers and "distinctiveness" in numbers
    for c in numbers:
        np.testing.assert_allclose(b[c], a[c], rtol=1e-5, atol=1e-7, err_msg=c)
    oof_a, oof_b = pd.read_csv(folder.run / "predictor_oof.csv"), pd.read_csv(run / "predictor_oof.csv")
    np.testing.assert_allclose(oof_b.select_dtypes("number"), oof_a.select_dtypes("number"), rtol=1e-5, atol=1e-7)
    info = json.loads((run / "dataset.json").read_text())
    assert info["layout"] == "parquet" and info["source"] == str(source)
    copies = sorted((run / "images").iterdir())
    assert len(copies) == len(t) and all(p.stat().st_size > 0 for p in copies)
    assert (run / "attributions" / "attributions.npz").is_file() and (run / "descriptors.csv").is_file()
    html = (run / "report.html").read_text()
    assert "image not found" not in html and "data:image/jpeg;base64" in html


def test_image_files_are_written_once_and_follow_a_rewritten_file(tmp_path, monkeypatch):
    from memlens.data.local_files import with_image_files

    path = _write(tmp_path / "set.parquet", [10, 20])
    ds = load_dataset(path)
    copies = tmp_path / "run" / "images"
    out = with_image_files(ds, copies)
    assert (out.source, out.layout, out.image_ids) == (ds.source, ds.layout, ds.image_ids)
    assert all(layout.is_locator(p) for p in ds.paths)  # the data set given is left as it was
    files = [Path(p) for p in out.paths]
    assert [f.parent for f in files] == [copies, copies] and [f.suffix for f in files] == [".png", ".png"]
    assert [f.read_bytes() for f in files] == [_png(10), _png(20)] and files[0].name.startswith("v10-")

    def no_read(self, loc):
        raise AssertionError(f"read {loc} again")

    with monkeypatch.context() as m:  # the files are there: nothing is read
        m.setattr(layout.LocatedReader, "image", no_read)
        assert with_image_files(ds, copies).paths == out.paths

    _write(path, [30, 40])  # the same ids, other images: new files, not the old ones
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    again = with_image_files(load_dataset(path), copies)
    assert again.paths != out.paths and [Path(p).read_bytes() for p in again.paths] == [_png(30), _png(40)]

    (tmp_path / "local").mkdir()
    Image.open(again.paths[0]).save(tmp_path / "local" / "a.png")
    local = load_dataset(tmp_path / "local")  # a data set of local files is returned as it is
    assert with_image_files(local, copies) is local


def test_image_files_of_url_rows(tmp_path):
    """A Parquet data set whose image column holds URLs (fsspec's in-memory file system here)."""
    fsspec = pytest.importorskip("fsspec")
    from memlens.data.local_files import with_image_files

    mem = fsspec.filesystem("memory")
    try:
        for v in (50, 60):
            mem.pipe(f"/memlens-urls/{v}.png", _png(v))
        pq.write_table(pa.table({"image_id": ["a", "b"], "image": ["memory://memlens-urls/50.png",
                                                                    "memory://memlens-urls/60.png"]}),
                       tmp_path / "urls.parquet")
        ds = load_dataset(tmp_path / "urls.parquet")
        out = with_image_files(ds, tmp_path / "images")
        assert [Path(p).read_bytes() for p in out.paths] == [_png(50), _png(60)]
    finally:
        mem.rm("/memlens-urls", recursive=True)


def test_a_rewritten_parquet_file_is_changed_data_for_memlens_run(tmp_path):
    """The pipeline's data fingerprint (what decides that a stage is up to date) covers the Parquet files
    holding the images, not only the table: new image bytes under the same ids and scores are new data."""
    from memlens.commands._pipeline import data_fingerprint

    path = _write(tmp_path / "set.parquet", [10, 20])
    first = data_fingerprint(path)
    assert data_fingerprint(path) == first
    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    st = path.stat()
    pq.write_table(table.set_column(1, "image", pa.array(images[::-1])), path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # also where file times are coarse
    assert path.stat().st_size == st.st_size and load_dataset(path).table["score"].tolist() == [10 / 255, 20 / 255]
    assert data_fingerprint(path) != first


def test_image_files_of_struct_cells_odd_ids_and_empty_cells(tmp_path, monkeypatch):
    """{bytes, path} cells: bytes are copied, a relative path without bytes is read beside the Parquet file;
    ids that would give a hidden or clashing file name get their own visible files; an empty cell is a
    DataError naming its id; check's readers are closed when its pass is over."""
    from memlens.data.local_files import with_image_files
    from memlens.errors import DataError

    (tmp_path / "data" / "sub").mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 77, np.uint8)).save(tmp_path / "data" / "sub" / "x.png")
    cells = [{"bytes": _png(10), "path": None}, {"bytes": None, "path": "sub/x.png"}, {"bytes": _png(30), "path": None},
             {"bytes": _png(40), "path": None}]
    path = tmp_path / "data" / "set.parquet"
    pq.write_table(pa.table({"image_id": [".hidden", "rel", "a/b", "a_b"], "image": cells}), path)
    ds = load_dataset(path)
    closed = []
    real_close = layout.LocatedReader.close
    monkeypatch.setattr(layout.LocatedReader, "close", lambda self: (closed.append(self), real_close(self)))
    report = validate_dataset(path, n_jobs=2)
    assert report.ok and closed  # every reader of the pass closed
    out = with_image_files(ds, tmp_path / "images")
    assert [Path(p).read_bytes() for p in out.paths[:1] + out.paths[2:]] == [_png(10), _png(30), _png(40)]
    assert Path(out.paths[1]) == tmp_path / "data" / "sub" / "x.png"
    names = [Path(p).name for p in out.paths if Path(p).parent == tmp_path / "images"]
    assert len(set(names)) == 3 and not any(n.startswith(".") for n in names)
    assert with_image_files(ds, tmp_path / "images").paths == out.paths  # found again, hidden-looking id too

    pq.write_table(pa.table({"image_id": ["e"], "image": [b""]}), tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="e: empty image"):
        with_image_files(load_dataset(tmp_path / "empty.parquet"), tmp_path / "images2")
