"""``memlens score`` end to end on a tiny generated data set with a tiny checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from memlens.cli import main

models = pytest.importorskip("memlens.models", reason="memlens.models not available yet")
data = pytest.importorskip("memlens.data.demo", reason="memlens.data not available yet")
pytest.importorskip("memlens.neighbors", reason="memlens.neighbors not available yet")

N = 15


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "demo"
    return data.make_demo_set(root, n_images=N, image_size=32, n_experience=0, n_observers=10, n_splits=3)


def _make_run(folder, demo_root=None, exposed=None):
    folder.mkdir(parents=True, exist_ok=True)
    for fname, seed in (("autoencoder.pt", 0), ("autoencoder_before.pt", 1)):
        model = models.create_autoencoder("small", input_size=32, width=4, latent_channels=4, seed=seed)
        models.save_autoencoder(folder / fname, model)
    if exposed is not None:
        pd.DataFrame({"image_id": exposed, "order": range(len(exposed)),
                      "loss": np.linspace(0.1, 0.2, len(exposed))}).to_csv(folder / "exposure.csv", index=False)
    if demo_root is not None:
        (folder / "dataset.json").write_text(json.dumps({"source": str(demo_root), "layout": "memcat",
                                                         "options": {}}))
    return folder


def _nn_distance(x: np.ndarray, metric: str = "euclidean", groups=None) -> np.ndarray:
    x = x.astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = 1 - x @ x.T
    else:
        d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    if groups is not None:
        g = np.asarray(groups)
        d[g[:, None] != g[None, :]] = np.inf
    return d.min(1)


def test_score_writes_the_documented_files(demo, tmp_path, capsys):
    from memlens.data import load_dataset, load_image, load_split_halves

    table = load_dataset(demo).table
    exposed = table["image_id"].tolist()[::2]
    run = _make_run(tmp_path / "run", exposed=exposed)
    held = table["image_id"].tolist()[1:6:2]  # held out for visual experience
    (run / "experience_ids.txt").write_text("\n".join(held) + "\n")
    rc = main(["score", str(demo), "--run", str(run), "--batch-size", "4"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert f"scored {N} images" in out.out

    per = pd.read_csv(run / "per_image.csv")
    metrics = ["mse", "l1", "dssim", "ms-dssim", "perceptual"]
    if "recon_lpips" in per.columns:  # the optional extra is installed here
        metrics.append("lpips")
    expected = (["image_id", "score", "category", "subcategory"] + [f"recon_{m}" for m in metrics]
                + [f"recon_{m}_before" for m in metrics]
                + ["recon_exposure", "exposure_order", "role", "distinctiveness", "distinctiveness_features"])
    assert per.columns.tolist()[: len(expected)] == expected
    rest = per.columns.tolist()[len(expected):]
    assert "path" in rest and "memorability_w_fa_correction" in rest  # source columns pass through
    assert per["image_id"].tolist() == table["image_id"].tolist()
    np.testing.assert_allclose(per["score"], table["score"])
    for m in metrics:
        assert (per[f"recon_{m}"] > 0).all() and (per[f"recon_{m}_before"] > 0).all()
        assert not np.allclose(per[f"recon_{m}"], per[f"recon_{m}_before"])  # two different models
    # the exposure loss is attached to the exposed images only
    exp = per.set_index("image_id")["recon_exposure"]
    np.testing.assert_allclose(exp[exposed], np.linspace(0.1, 0.2, len(exposed)))
    assert exp.drop(exposed).isna().all()
    order = per.set_index("image_id")["exposure_order"]  # its position in the stream, for partialling out
    assert order[exposed].tolist() == list(range(len(exposed))) and order.drop(exposed).isna().all()
    raw = pd.read_csv(run / "per_image.csv", dtype=str)["exposure_order"].dropna()
    assert raw.str.fullmatch(r"\d+").all()  # written as positions (3), not floats (3.0)
    role = per.set_index("image_id")["role"]
    assert (role[exposed] == "exposed").all() and (role[held] == "experience").all()
    assert (role.drop(exposed + held) == "not exposed").all()

    latents = np.load(run / "latents.npy")
    assert latents.shape == (N, 4 * 4 * 4) and latents.dtype == np.float32
    assert (run / "latent_ids.txt").read_text().splitlines() == per["image_id"].tolist()
    features = np.load(run / "features.npy")
    assert features.shape == (N, 1280) and features.dtype == np.float32
    np.testing.assert_allclose(per["distinctiveness"], _nn_distance(latents), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(per["distinctiveness_features"], _nn_distance(features), rtol=1e-5, atol=1e-6)

    # the noise ceiling travels with the run, aligned with the scored images
    halves = load_split_halves(run / "split_halves.npz")
    source = load_split_halves(demo / "split_halves.npz").subset(list(halves.image_ids))
    assert set(halves.image_ids) == set(per["image_id"])
    np.testing.assert_array_equal(halves.half1, source.half1)
    np.testing.assert_array_equal(halves.half2, source.half2)

    # latents are the model's bottleneck for these images
    model = models.load_autoencoder(run / "autoencoder.pt").eval()
    x = torch.from_numpy(np.stack([load_image(p, 32) for p in table["path"][:2]])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        z = model.encode(x)
    np.testing.assert_allclose(latents[:2], z.flatten(1).numpy(), rtol=1e-4, atol=1e-5)

    # the settings are recorded for later stages (predict, explain, report)
    cfg = json.loads((run / "config.json").read_text())["score"]
    assert cfg["pool"] == "none" and cfg["layer"] is None and cfg["image_size"] == 32
    assert cfg["feature_size"] == 224 and cfg["latent_shape"] == [4, 4, 4] and cfg["metrics"] == metrics

    # scoring again gives byte-identical files; no temporary files are left behind
    files = ["per_image.csv", "latents.npy", "latent_ids.txt", "features.npy", "split_halves.npz", "config.json"]
    before = {f: (run / f).read_bytes() for f in files}
    assert main(["score", str(demo), "--run", str(run), "--batch-size", "4"]) == 0
    assert {f: (run / f).read_bytes() for f in files} == before
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


def test_score_options_and_dataset_json(demo, tmp_path, capsys):
    run = _make_run(tmp_path / "run", demo_root=demo)
    rc = main(["-q", "score", "--run", str(run), "--metrics", "mse,dssim", "--pool", "avg", "--latent-dtype",
               "float16", "--distinct-k", "1", "--distinct-metric", "cosine", "--distinct-reference", "category",
               "--batch-size", "7", "--device", "cpu", "--feature-size", "64"])
    assert rc == 0, capsys.readouterr().err
    per = pd.read_csv(run / "per_image.csv")
    recon = [c for c in per.columns if c.startswith("recon_")]
    assert recon == ["recon_mse", "recon_dssim", "recon_mse_before", "recon_dssim_before"]  # no exposure.csv
    latents = np.load(run / "latents.npy")
    assert latents.shape == (N, 4) and latents.dtype == np.float16
    np.testing.assert_allclose(per["distinctiveness"], _nn_distance(latents, "cosine", per["category"]),
                               rtol=2e-3, atol=1e-4)
    features = np.load(run / "features.npy")
    assert features.shape == (N, 1280)
    np.testing.assert_allclose(per["distinctiveness_features"], _nn_distance(features, "cosine", per["category"]),
                               rtol=1e-4, atol=1e-6)
    (run / "config.json").write_text(json.dumps({"train": {"loss": "mse"}}))
    assert main(["-q", "score", "--run", str(run), "--metrics", "mse", "--pool", "avg", "--feature-size", "32"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"] == {"loss": "mse"} and cfg["score"]["pool"] == "avg"  # other sections are kept


def test_faiss_index_without_faiss_fails_before_scoring(demo, tmp_path, capsys, monkeypatch):
    import sys

    from memlens.scoring import score_run

    run = _make_run(tmp_path / "run", demo_root=demo)
    assert main(["-q", "score", "--run", str(run), "--metrics", "mse", "--feature-size", "32"]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError, as without the extra
    calls = []
    monkeypatch.setattr("memlens.scoring.engines.score_images", lambda *a, **k: calls.append(1))
    capsys.readouterr()
    assert main(["-q", "score", "--run", str(run), "--metrics", "mse", "--feature-size", "64", "--index", "ivf"]) == 1
    assert "need the faiss extra: pip install 'memlens[faiss]'" in capsys.readouterr().err
    assert calls == []  # nothing was scored
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing was rewritten
    with pytest.raises(Exception, match="faiss extra"):
        score_run(run, index="hnsw", engine="ray")


def test_score_layer_option(demo, tmp_path, capsys):
    run = _make_run(tmp_path / "run")
    rc = main(["score", str(demo), "--run", str(run), "--metrics", "mse", "--layer", "encoder.2",
               "--feature-size", "32"])
    assert rc == 0, capsys.readouterr().err
    latents = np.load(run / "latents.npy")
    assert latents.shape == (N, 4 * 16 * 16) and (latents >= 0).all()  # first conv/BN/ReLU stage
    rc = main(["score", str(demo), "--run", str(run), "--metrics", "mse", "--layer", "nope"])
    assert rc == 1 and "layer 'nope' not found" in capsys.readouterr().err


def test_score_precision_option(demo, tmp_path, capsys):
    """--precision bfloat16 runs the autoencoder in bf16: float32 outputs, numbers close to float32's."""
    import pandas as pd

    runs = {}
    for prec in ("float32", "bfloat16"):
        run = _make_run(tmp_path / prec)
        rc = main(["score", str(demo), "--run", str(run), "--metrics", "mse", "--feature-size", "32",
                   "--precision", prec])
        assert rc == 0, capsys.readouterr().err
        runs[prec] = (pd.read_csv(run / "per_image.csv"), np.load(run / "latents.npy"))
    a, b = runs["float32"], runs["bfloat16"]
    assert b[1].dtype == np.float32
    rel = np.abs(a[0]["recon_mse"] - b[0]["recon_mse"]) / a[0]["recon_mse"]
    assert 0 < rel.max() < 0.1  # different arithmetic, same measurements within bf16's ~3 digits
    assert np.corrcoef(a[0]["recon_mse"], b[0]["recon_mse"])[0, 1] > 0.99
    assert main(["score", str(demo), "--run", str(tmp_path / "float32"), "--precision", "half"]) == 2


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--metrics", "mse,psnr"], 1, "available metrics"),
        (["--metrics", "ssim"], 1, "dssim"),
        (["--pool", "max"], 2, "pool"),
        (["--distinct-reference", "split"], 1, "split column"),
        (["--device", "tpu"], 2, "'tpu': use auto, cpu, cuda or cuda:N"),  # a typo: usage error
        (["--distinct-k", str(N)], 1, f"--distinct-k {N}: needs more than {N} images; the data set has {N}"),
    ],
)
def test_score_errors(demo, tmp_path, capsys, args, code, message):
    run = _make_run(tmp_path / "run")
    assert main(["score", str(demo), "--run", str(run), *args]) == code
    assert message in capsys.readouterr().err
    assert not (run / "per_image.csv").exists()


def test_score_run_dir_errors(demo, tmp_path, capsys):
    assert main(["score", str(demo), "--run", str(tmp_path / "empty")]) == 1
    assert "no autoencoder.pt" in capsys.readouterr().err
    run = _make_run(tmp_path / "run")
    assert main(["score", "--run", str(run)]) == 1
    assert "dataset.json" in capsys.readouterr().err


def test_split_halves_copied_from_the_data_root(demo, tmp_path):
    import dataclasses

    from memlens.data import load_dataset
    from memlens.scoring import score_run

    ds = dataclasses.replace(load_dataset(demo), halves=None)
    run = _make_run(tmp_path / "run")
    table = score_run(run, ds, metrics=["mse"], feature_size=32, device="cpu")
    assert len(table) == N and table.attrs["info"]["n_images"] == N
    assert (run / "split_halves.npz").read_bytes() == (demo / "split_halves.npz").read_bytes()
