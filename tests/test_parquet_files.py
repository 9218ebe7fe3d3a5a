"""How the parquet layout opens its files: no module-level cache of open files (a file rewritten under its name
is read as it is now), one reader per thread (a ParquetFile is not safe to share between threads: two `check`
threads reading row groups of one shared file deadlocked in Arrow's read cache), files closed after reading,
and a file that cannot be read is one problem line per image, not an internal error."""

from __future__ import annotations

import io
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
