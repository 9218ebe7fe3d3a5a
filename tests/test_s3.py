"""A Parquet data set in an S3 bucket: a real S3 API over HTTP (moto's server on 127.0.0.1, in a process of its
own), not an in-memory file system.

The S3 client (the AWS SDK inside pyarrow) runs in a fresh child process, as it does for a user of the CLI: a
native crash there then fails this test with the child's stack (``-X faulthandler``) instead of taking down the
pytest worker with no message, and no Ray session or other native state left by earlier tests shares its
process. This process only starts the servers and uploads with boto3 (pure Python)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

from _ray_helpers import METRICS, NUMBERS, make_run

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'memlens[ray]')")
pq = pytest.importorskip("pyarrow.parquet")
moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install 'moto[server]', "
                                                        "part of memlens[dev])")
boto3 = pytest.importorskip("boto3")

from memlens.data import load_dataset, make_demo_set  # noqa: E402
from memlens.scoring import score_run  # noqa: E402

N = 24
FEATURE_SIZE = 64
BUCKET = "memlens-test"

# run in the child: every step's outcome as one JSON line on stdout
CHILD = textwrap.dedent("""
    import contextlib, io, json, os, sys
    from memlens.cli import main
    from memlens.data import load_dataset
    from memlens.errors import DataError
    from memlens.scoring import score_run

    first, second, dead, run = sys.argv[1:5]
    uri = "s3://%s/images/"
    out = {}

    def endpoint(url):
        os.environ["AWS_ENDPOINT_URL"] = url

    def cli(*args):
        buf, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
            rc = main(list(args))
        return rc, buf.getvalue() + err.getvalue()

    endpoint(first)
    out["check"] = cli("check", uri, "--layout", "parquet")
    score_run(run, uri, layout="parquet", metrics=%r, feature_size=%d, device="cpu")
    try:
        load_dataset("s3://%s/nothing-here/", layout="parquet")
        out["missing"] = None
    except DataError as exc:
        out["missing"] = str(exc)
    endpoint(second)  # the same bucket and folder on another server: its own rows, not the first server's
    out["second_ids"] = load_dataset(uri, layout="parquet").table["image_id"].tolist()
    endpoint(dead)  # nothing listens there
    out["dead"] = cli("check", uri, "--layout", "parquet")
    print(json.dumps(out))
""") % (BUCKET, METRICS, FEATURE_SIZE, BUCKET)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_set(tmp_path_factory.mktemp("data") / "demo", n_images=N, image_size=32, n_experience=0,
                         n_observers=10, n_splits=3)


@pytest.fixture(scope="module")
def parquet_files(demo):
    """The demo images as encoded bytes in two Parquet files (bytes in memory) with row groups of 5 rows."""
    t = load_dataset(demo).table
    table = pa.table({"image_id": t["image_id"].tolist(), "image": [open(p, "rb").read() for p in t["path"]],
                      "score": t["score"].tolist(), "category": t["category"].tolist()})
    out = {}
    for name, part in (("part-0.parquet", table.slice(0, 14)), ("part-1.parquet", table.slice(14))):
        sink = pa.BufferOutputStream()
        pq.write_table(part, sink, row_group_size=5)
        out[name] = sink.getvalue().to_pybytes()
    return out


def _server(files):
    """A moto S3 server on 127.0.0.1 in a process of its own (servers in one process share their buckets),
    holding ``files`` under ``BUCKET/images/``; ``(process, endpoint)``."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the moto server did not start on 127.0.0.1:{port}")
            time.sleep(0.2)
    try:
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test",
                          aws_secret_access_key="test")
        s3.create_bucket(Bucket=BUCKET)
        for name, data in files.items():
            s3.put_object(Bucket=BUCKET, Key=f"images/{name}", Body=data)
    except BaseException:
        _stop(proc)
        raise
    return proc, url


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover
        proc.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_parquet_in_s3_checked_and_scored_with_the_numbers_of_the_image_files(demo, parquet_files, tmp_path,
                                                                               monkeypatch):
    """check reads every cell of s3://bucket/folder/, scoring it gives the numbers of the image files, a
    missing folder is a DataError, a new endpoint in the environment is used (not a client kept for the old
    one), and an endpoint nobody answers at is a one-line error, not an internal error."""
    reference = make_run(tmp_path / "folder")
    score_run(reference, demo, metrics=METRICS, feature_size=FEATURE_SIZE, device="cpu")
    servers = []
    try:
        servers.append(_server(parquet_files))
        servers.append(_server({"part-1.parquet": parquet_files["part-1.parquet"]}))
        (_, url1), (_, url2) = servers
        for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                     "AWS_MAX_ATTEMPTS": "1"}.items():
            monkeypatch.setenv(k, v)
        run = make_run(tmp_path / "s3run")
        res = subprocess.run([sys.executable, "-X", "faulthandler", "-c", CHILD, url1, url2,
                              f"http://127.0.0.1:{_free_port()}", str(run)],
                             capture_output=True, text=True, timeout=300)
    finally:
        for proc, _ in servers:
            _stop(proc)
    assert res.returncode == 0, f"the child exited with {res.returncode}:\n{res.stderr[-6000:]}"
    out = json.loads(res.stdout.strip().splitlines()[-1])

    rc, text = out["check"]
    assert rc == 0 and f"{N} images" in text, text
    a, b = pd.read_csv(reference / "per_image.csv"), pd.read_csv(run / "per_image.csv")
    assert b["image_id"].tolist() == a["image_id"].tolist()
    for c in NUMBERS:
        np.testing.assert_allclose(b[c].to_numpy(float), a[c], rtol=1e-4, atol=1e-6, err_msg=c)
    assert b["category"].tolist() == a["category"].tolist()
    assert "no such file or folder" in out["missing"]

    part1 = pq.read_table(pa.BufferReader(parquet_files["part-1.parquet"]))["image_id"].to_pylist()
    assert out["second_ids"] == part1 and len(part1) == N - 14

    rc, text = out["dead"]
    lines = [line for line in text.splitlines() if line.strip()]
    assert rc != 0 and "cannot list" in lines[0] and "internal error" not in text and "Traceback" not in text
    assert len(lines) == 2, text  # the problem, then the count
