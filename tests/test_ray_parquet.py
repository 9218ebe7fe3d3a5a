"""Parquet sources and sinks: a Parquet data set of image bytes scored in one process and through the Ray
streaming pipeline (local 2-CPU Ray instance on 127.0.0.1) gives the numbers of folder scoring."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from _ray_helpers import METRICS, NUMBERS, loopback_cluster, make_run

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'memlens[ray]')")
pytest.importorskip("ray.data", reason="ray[data] is not installed")
pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed")
pq = pytest.importorskip("pyarrow.parquet")

from memlens.cli import main  # noqa: E402
from memlens.data import load_dataset, make_demo_set  # noqa: E402
from memlens.errors import DataError  # noqa: E402
from memlens.scoring import score_run  # noqa: E402
from memlens.scoring.ray_engine import read_parts, score_run_ray  # noqa: E402

N = 24
FEATURE_SIZE = 64


@pytest.fixture(scope="module")
def cluster():
    yield from loopback_cluster(ray, pytest)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_set(tmp_path_factory.mktemp("data") / "demo", n_images=N, image_size=32, n_experience=0,
                         n_observers=10, n_splits=3)


def _table(demo):
    t = load_dataset(demo).table
    return pa.table({"image_id": t["image_id"].tolist(), "image": [open(p, "rb").read() for p in t["path"]],
                     "score": t["score"].tolist(), "category": t["category"].tolist()})


@pytest.fixture(scope="module")
def parquet_data(demo, tmp_path_factory):
    """The demo images as encoded bytes in two Parquet files with row groups of 5 rows."""
    folder = tmp_path_factory.mktemp("parquet")
    table = _table(demo)
    pq.write_table(table.slice(0, 14), folder / "part-0.parquet", row_group_size=5)
    pq.write_table(table.slice(14), folder / "part-1.parquet", row_group_size=5)
    return folder


@pytest.fixture(scope="module")
def reference(demo, tmp_path_factory):
    """Single-process scoring of the image files."""
    run = make_run(tmp_path_factory.mktemp("runs") / "folder")
    score_run(run, demo, metrics=METRICS, feature_size=FEATURE_SIZE, device="cpu")
    return run


def _assert_same_numbers(table, ref, run=None):
    a = pd.read_csv(ref / "per_image.csv")
    assert table["image_id"].tolist() == a["image_id"].tolist()
    for c in NUMBERS:
        np.testing.assert_allclose(table[c].to_numpy(float), a[c], rtol=1e-4, atol=1e-6, err_msg=c)
    np.testing.assert_allclose(table["score"].to_numpy(float), a["score"])
    assert table["category"].tolist() == a["category"].tolist()
    if run is not None:  # the latents as parts equal the folder run's latents.npy
        from memlens.index import ShardedLatents

        parts = sorted((run / "latents").glob("part-*.npy"))
        np.testing.assert_allclose(ShardedLatents(parts)[:], np.load(ref / "latents.npy"), rtol=1e-4, atol=1e-6)


def test_parquet_source_in_one_process_equals_folder_scoring(demo, reference, parquet_data, tmp_path):
    ds = load_dataset(parquet_data)
    assert ds.layout == "parquet" and len(ds) == N and ds.has_scores
    table = score_run(make_run(tmp_path / "run"), parquet_data, metrics=METRICS, feature_size=FEATURE_SIZE,
                      device="cpu")
    _assert_same_numbers(table, reference)
    # a glob in object storage (fsspec's in-memory file system): the same rows
    fsspec = pytest.importorskip("fsspec")
    mem = fsspec.filesystem("memory")
    for p in parquet_data.glob("*.parquet"):
        mem.pipe(f"/memlens-test/{p.name}", p.read_bytes())
    try:
        remote = load_dataset("memory://memlens-test/*.parquet")
        assert remote.table["image_id"].tolist() == ds.table["image_id"].tolist()
    finally:
        mem.rm("/memlens-test", recursive=True)


def test_parquet_to_parquet_on_two_workers_equals_folder_scoring(cluster, reference, parquet_data, tmp_path):
    """Bytes in Parquet -> Ray (2 model actors) -> Parquet parts, without merging; a decode worker is killed."""
    run = make_run(tmp_path / "run")
    marker = tmp_path / "decoder-died"
    table = score_run_ray(run, parquet_data, workers=2, merge=False, shard_size=8, metrics=METRICS,
                          feature_size=FEATURE_SIZE, batch_size=4,
                          _inject=[{"stage": "decode", "unit": 1, "kind": "exit", "marker": str(marker)}])
    assert marker.exists()  # the decode task of unit 1 died once and was retried
    info = table.attrs["info"]
    assert (info["n_images"], info["merge"], info["workers"]) == (N, False, 2)
    assert info["decode_seconds"] > 0 and info["model_seconds"] > 0
    assert not (run / "per_image.csv").exists() and not (run / "latents.npy").exists()
    _assert_same_numbers(read_parts(run), reference, run)
    # and merged (the standard run files) from the same parts: nothing is scored again
    table = score_run_ray(run, parquet_data, workers=2, merge=True, shard_size=8, metrics=METRICS,
                          feature_size=FEATURE_SIZE, batch_size=4)
    assert table.attrs["info"]["shards_run"] == 0
    _assert_same_numbers(pd.read_csv(run / "per_image.csv"), reference)
    np.testing.assert_allclose(np.load(run / "features.npy"), np.load(reference / "features.npy"), rtol=1e-4,
                               atol=1e-5)


def test_resume_after_interruption(cluster, reference, parquet_data, tmp_path):
    run = make_run(tmp_path / "run")
    kw = {"workers": 2, "merge": False, "shard_size": 8, "metrics": METRICS, "feature_size": FEATURE_SIZE,
          "batch_size": 4}
    # units: rows 0-4, 5-9, 10-13 (file 0, row groups of 5, at most 8 rows), 14-18, 19-23 (file 1)
    with pytest.raises(DataError, match=r"units complete.*run again to continue.*unit 3"):
        score_run_ray(run, parquet_data, **kw, _inject=[{"stage": "model", "unit": 3, "kind": "fail"}])
    starts = {0: 0, 5: 1, 10: 2, 14: 3, 19: 4}
    done = sorted({starts[int(p.stem.split("-")[1])] for p in (run / "per_image").glob("part-*.parquet")
                   if int(p.stem.split("-")[1]) in starts})
    assert 3 not in done
    # the rerun scores only what is missing: a complete unit would fail here
    table = score_run_ray(run, parquet_data, **kw, _inject=[{"stage": "model", "unit": k, "kind": "fail"}
                                                            for k in done])
    assert table.attrs["info"]["shards_skipped"] == len(done)
    _assert_same_numbers(read_parts(run), reference, run)
    # an interruption that left a unit half written (its last part gone): only that unit is scored again
    last = max((run / "per_image").glob("part-*.parquet"))
    assert int(last.stem.split("-")[1]) >= 19  # unit 4 (rows 19-23)
    last.unlink()
    table = score_run_ray(run, parquet_data, **kw, _inject=[{"stage": "decode", "unit": k, "kind": "fail"}
                                                            for k in range(4)])
    assert (table.attrs["info"]["shards_run"], table.attrs["info"]["shards_skipped"]) == (1, 4)
    _assert_same_numbers(read_parts(run), reference, run)


def test_cli_parquet_no_merge(cluster, reference, parquet_data, tmp_path, capsys):
    run = make_run(tmp_path / "run")
    rc = main(["-q", "score", str(parquet_data), "--run", str(run), "--engine", "ray", "--workers", "2",
               "--layout", "parquet", "--no-merge", "--cpus-per-decoder", "0.5", "--metrics", "mse,dssim",
               "--feature-size", str(FEATURE_SIZE)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert f"scored {N} images" in out.out and "part-*.parquet" in out.out
    _assert_same_numbers(read_parts(run), reference, run)
    assert main(["score", str(parquet_data), "--run", str(run), "--no-merge"]) == 2
    assert "--no-merge is for --engine ray" in capsys.readouterr().err
    # analyze on the parts alone: one line saying how to get per_image.csv
    assert main(["analyze", str(run)]) != 0
    err = capsys.readouterr().err
    assert "--no-merge" in err and "--merge" in err and "Traceback" not in err


def test_check_decodes_every_parquet_cell(parquet_data, tmp_path, capsys):
    """memlens check reads a Parquet data set's cells as it reads files: a broken cell is one problem line."""
    assert main(["check", str(parquet_data), "--layout", "parquet"]) == 0
    capsys.readouterr()
    table = pq.read_table(parquet_data / "part-0.parquet").to_pandas()
    table.loc[2, "image"] = b"not an image"
    broken = tmp_path / "broken"
    broken.mkdir()
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), broken / "part-0.parquet")
    assert main(["check", str(broken), "--layout", "parquet"]) != 0
    out = capsys.readouterr()
    assert table.loc[2, "image_id"] in out.out + out.err and "Traceback" not in out.err


def test_no_merge_run_saves_its_index_and_new_images_use_it(cluster, parquet_data, tmp_path, capsys):
    """A million image bytes -> Parquet parts and an index: a --no-merge run with --index ivf saves the trained
    index beside its parts, and the distinctiveness of new images searches it (the parts are the latents)."""
    import json

    from memlens.index_store import distinctiveness_of_latents, saved_index_dir

    run = make_run(tmp_path / "run")
    rc = main(["-q", "score", str(parquet_data), "--run", str(run), "--engine", "ray", "--workers", "1",
               "--layout", "parquet", "--no-merge", "--metrics", "mse", "--feature-size", str(FEATURE_SIZE),
               "--index", "ivf", "--nlist", "2", "--nprobe", "2"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((run / "index.json").read_text())["distinctiveness"]
    assert report["saved_to"] == "index/distinctiveness" and report["n"] == N
    assert (saved_index_dir(run) / "index.faiss").is_file()
    from memlens.index import ShardedLatents

    lat = ShardedLatents.from_run(run)[:]
    values, info = distinctiveness_of_latents(run, lat[:3])
    assert info["search"] == "saved ivf index"
    np.testing.assert_allclose(values, 0.0, atol=1e-4)  # each finds its own latent among the parts


def test_every_pipeline_stage_has_a_bounded_concurrency():
    """No stage may run an unbounded number of tasks: the read and write stages reserve no CPU, and without a
    cap Ray started a worker process for every unit at once (70 processes on 2 cores for a million images)."""
    from types import SimpleNamespace

    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    from memlens.scoring import ray_engine

    calls = []

    class Recorder:
        def map_batches(self, fn, **kw):
            calls.append((getattr(fn, "__name__", str(fn)), kw))
            return self

    fake = SimpleNamespace(data=SimpleNamespace(from_items=lambda items, override_num_blocks: Recorder()))
    items = [{"unit": k} for k in range(490)]
    ray_engine._build(fake, ActorPoolStrategy, items, source=None, stages={"inject": None}, run=None,
                      image_size=32, feature_size=32, batch_size=64, shard_size=1024, workers=2, gpw=0, cpus=1,
                      decoders=3, cpus_per_decoder=1)
    assert [name for name, _ in calls] == ["read_units", "decode_batch", "ModelStage", "write_parts"]
    for name, kw in calls:
        compute = kw.get("compute")
        assert isinstance(compute, (TaskPoolStrategy, ActorPoolStrategy)), name
        size = getattr(compute, "size", None) or getattr(compute, "max_size", None)
        assert size is not None and 1 <= size <= 3, (name, size)
