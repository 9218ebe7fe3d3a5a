"""The metric registry: distances, SSIM against scikit-image, losses, lpips conversion, perceptual metric."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from memlens import metrics as M
from memlens.errors import ConfigError, MemlensError


class ToyExtractor(nn.Module):
    """Two conv layers returning both feature maps, like the EfficientNet extractor (images in [0, 1])."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(16)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            self.bn.running_mean.copy_(torch.randn(16, generator=g) * 0.1)
            self.bn.running_var.copy_(torch.rand(16, generator=g) + 0.5)
        self.eval()

    def forward(self, x: torch.Tensor, check: bool = True) -> list[torch.Tensor]:
        a = torch.relu(self.c1(x - 0.5))
        b = torch.relu(self.bn(self.c2(a)))
        return [a, b]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is much faster than several on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def toy_perceptual(monkeypatch):
    """Make the 'perceptual' metric use the toy extractor on the CPU (no pretrained weights needed)."""
    monkeypatch.setitem(M._EXTRACTORS, "cpu", ToyExtractor())


@pytest.fixture
def fake_lpips(monkeypatch):
    """A stand-in for the lpips package that records what it receives: 0.25 * mean squared difference."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    class LPIPS(nn.Module):
        def __init__(self, net: str = "alex", verbose: bool = True) -> None:
            super().__init__()
            self.net = net
            self.w = nn.Parameter(torch.tensor(0.25))

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            seen.append((a.detach().clone(), b.detach().clone()))
            return (self.w * (a - b).pow(2).mean(dim=(1, 2, 3))).view(-1, 1, 1, 1)

    module = types.ModuleType("lpips")
    module.LPIPS = LPIPS
    monkeypatch.setitem(sys.modules, "lpips", module)
    monkeypatch.setattr(M, "_LPIPS_MODELS", {})
    return seen


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 3, 48, 40, generator=g)
    y = (x + 0.15 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x, y


CORE = ["mse", "l1", "dssim", "ms-dssim", "perceptual"]
ALL = CORE + ["lpips"]


def test_registry_lists_every_metric_with_metadata():
    names = M.list_metrics()
    assert names[:6] == ALL
    for name in names:
        m = M.get_metric(name)
        assert m.kind == "distance" and m.name == name and m.column == f"recon_{name}"
        assert m.range[0] == 0.0 and m.description
    assert M.get_metric("lpips").extra == "lpips"
    assert M.get_metric("mse").extra is None
    assert M.get_metric("MS_DSSIM") is M.get_metric("ms-dssim")


def test_unknown_metric_lists_available_and_similarities_are_refused():
    with pytest.raises(ConfigError) as exc:
        M.get_metric("psnr")
    assert "psnr" in str(exc.value) and all(n in str(exc.value) for n in CORE)
    with pytest.raises(ConfigError, match="dssim"):
        M.get_metric("ssim")


def test_register_metric(monkeypatch):
    monkeypatch.setattr(M, "_REGISTRY", dict(M._REGISTRY))
    m = M.register_metric("linf", lambda x, y: (x - y).abs().flatten(1).amax(1), range=(0.0, 1.0))
    assert "linf" in M.list_metrics()
    x = torch.zeros(2, 3, 12, 12)
    y = x.clone()
    y[1, 0, 3, 3] = 0.75
    assert torch.equal(M.get_metric("linf")(x, y), torch.tensor([0.0, 0.75]))
    assert m is M.get_metric("linf")
    with pytest.raises(ConfigError, match="already registered"):
        M.register_metric("linf", lambda x, y: x.sum())
    with pytest.raises(ConfigError, match="distance"):
        M.register_metric("sim", lambda x, y: x.sum(), kind="similarity")
    M.register_metric("linf", lambda x, y: (x - y).abs().flatten(1).sum(1), overwrite=True)
    assert M.get_metric("linf")(x, y)[1].item() == pytest.approx(0.75)


@pytest.mark.parametrize("name", CORE)
def test_zero_for_identical_images_and_positive_otherwise(name, pair, toy_perceptual):
    x, y = pair
    metric = M.get_metric(name)
    same = metric(x, x.clone())
    assert same.shape == (5,)
    assert torch.allclose(same, torch.zeros(5), atol=1e-6)
    d = metric(x, y)
    assert d.shape == (5,) and d.dtype == torch.float32
    assert bool((d > 1e-4).all())
    lo, hi = metric.range
    assert bool((d >= lo).all()) and (hi is None or bool((d <= hi).all()))


@pytest.mark.parametrize("name", ["mse", "l1", "dssim", "ms-dssim", "perceptual"])
def test_symmetric(name, pair, toy_perceptual):
    x, y = pair
    metric = M.get_metric(name)
    torch.testing.assert_close(metric(x, y), metric(y, x), atol=1e-6, rtol=1e-5)


def test_pixel_metrics_values(pair):
    x, y = pair
    ref = ((x.double() - y.double()) ** 2).numpy().reshape(5, -1).mean(1)
    np.testing.assert_allclose(M.get_metric("mse")(x, y).numpy(), ref, rtol=1e-5)
    ref1 = (x.double() - y.double()).abs().numpy().reshape(5, -1).mean(1)
    np.testing.assert_allclose(M.get_metric("l1")(x, y).numpy(), ref1, rtol=1e-5)


def test_dssim_matches_scikit_image(pair):
    from skimage.metrics import structural_similarity

    x, y = pair
    g = torch.Generator().manual_seed(3)
    grey = torch.rand(2, 3, 30, 64, generator=g) * 0.5  # low contrast, non-square
    for a, b in [(x, y), (grey, (grey + 0.2 * torch.rand(grey.shape, generator=g)).clamp(0, 1))]:
        ours = M.get_metric("dssim")(a, b).numpy()
        ref = np.array([
            1 - structural_similarity(
                a[i].permute(1, 2, 0).double().numpy(), b[i].permute(1, 2, 0).double().numpy(),
                gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=2,
            )
            for i in range(a.shape[0])
        ])
        np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_dssim_stays_in_unit_interval_for_anticorrelated_images():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(3, 3, 32, 32, generator=g)
    inv = 1 - x
    assert bool((M.ssim(x, inv) < 0).all())  # SSIM itself is negative here...
    d = M.get_metric("dssim")(x, inv)
    assert torch.equal(d, torch.ones(3))  # ...and dssim is clipped to 1
    noisy = torch.rand(3, 3, 32, 32, generator=g)
    d2 = M.get_metric("dssim")(x, noisy)
    assert bool(((d2 >= 0) & (d2 <= 1)).all())


def test_ms_ssim_scales_rule():
    assert M.ms_ssim_scales(64, 64) == 3
    assert M.ms_ssim_scales(224, 224) == 5
    assert M.ms_ssim_scales(176, 500) == 5
    assert M.ms_ssim_scales(175, 500) == 4
    assert M.ms_ssim_scales(11, 11) == 1
    with pytest.raises(ValueError, match="11x11"):
        M.ms_ssim_scales(10, 64)


def test_ms_ssim_single_scale_equals_ssim(pair):
    x, y = pair
    small_x, small_y = x[..., :20, :20], y[..., :20, :20]
    assert M.ms_ssim_scales(20, 20) == 1
    torch.testing.assert_close(M.get_metric("ms-dssim")(small_x, small_y), M.get_metric("dssim")(small_x, small_y),
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("size", [64, 176])
def test_ms_dssim_monotone_under_noise(size):
    g = torch.Generator().manual_seed(5)
    base = torch.rand(1, 3, size // 8, size // 8, generator=g)
    x = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    noise = torch.randn(x.shape, generator=g)
    values = [M.get_metric("ms-dssim")(x, (x + s * noise).clamp(0, 1)).item() for s in (0.01, 0.03, 0.1, 0.3)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False)), values
    assert 0 < values[0] < values[-1] <= 1


@pytest.mark.parametrize("name", CORE)
def test_gradients_flow(name, pair, toy_perceptual):
    x, y = pair
    y = y.clone().requires_grad_(True)
    M.get_metric(name)(x, y).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()
    assert y.grad.abs().sum() > 0


@pytest.mark.parametrize("name", CORE)
def test_per_image_independence(name, pair, toy_perceptual):
    x, y = pair
    metric = M.get_metric(name)
    full = metric(x, y)
    alone = torch.cat([metric(x[i : i + 1], y[i : i + 1]) for i in range(5)])
    perm = torch.tensor([4, 2, 0, 3, 1])
    shuffled = metric(x[perm], y[perm])
    torch.testing.assert_close(full, alone, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(full[perm], shuffled, atol=1e-6, rtol=1e-5)


def test_input_validation():
    x = torch.rand(2, 3, 16, 16)
    x[0, 0, 0, 0] = 0.0
    with pytest.raises(ValueError, match=r"^x: .*observed min -0\.5, max 0\.\d+$"):
        M.get_metric("mse")(x - 0.5, x)
    with pytest.raises(ValueError, match=r"max 255"):
        M.get_metric("l1")(x, torch.full_like(x, 255.0))
    with pytest.raises(ValueError, match="shapes differ"):
        M.get_metric("mse")(x, x[:1])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        M.get_metric("mse")(x[0], x[0])
    with pytest.raises(ValueError, match="float"):
        M.get_metric("mse")((x * 255).to(torch.uint8), (x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="NaN|nan"):
        M.get_metric("mse")(x, torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="11x11"):
        M.get_metric("dssim")(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    # validate=False skips only the range check
    assert M.get_metric("mse")(x - 0.5, x, validate=False).shape == (2,)


def test_make_loss_values(pair):
    x, y = pair
    mse, l1, dssim, msd = (M.get_metric(n)(x, y) for n in ("mse", "l1", "dssim", "ms-dssim"))
    torch.testing.assert_close(M.make_loss("mse")(x, y), mse.mean())
    torch.testing.assert_close(M.make_loss("l1+0.5*dssim")(x, y), (l1 + 0.5 * dssim).mean())
    loss = M.make_loss("0.7*mse+0.3*ms-dssim")
    torch.testing.assert_close(loss(x, y), (0.7 * mse + 0.3 * msd).mean())
    torch.testing.assert_close(loss.per_image(x, y), 0.7 * mse + 0.3 * msd)
    assert loss.names == ["mse", "ms-dssim"] and loss.spec == "0.7*mse+0.3*ms-dssim"
    torch.testing.assert_close(M.make_loss({"l1": 1, "dssim": 0.5})(x, y), M.make_loss(" l1 + dssim*0.5 ")(x, y))
    assert M.make_loss("1e-1*mse").terms[0][0] == pytest.approx(0.1)
    assert M.make_loss("l1+0.5*dssim")(x, y).ndim == 0


def test_make_loss_gradient(pair):
    x, y = pair
    y = y.clone().requires_grad_(True)
    M.make_loss("l1+0.5*dssim+0.2*ms-dssim")(x, y).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("mse+psnr", r"psnr.*available metrics: mse, l1, dssim, ms-dssim, perceptual, lpips, lpips-squeeze, lpips-vgg"),
        ("", "empty"),
        ("mse+", "cannot read term"),
        ("0.5*", "cannot read term"),
        ("2*mse*3", "cannot read term"),
        ("0*mse", "positive"),
        ({"mse": -1.0}, "positive"),
        ("mse+mse", "twice"),
        ("ssim", "dssim"),
        (3, "string"),
    ],
)
def test_make_loss_errors(spec, pattern):
    with pytest.raises(ConfigError, match=pattern):
        M.make_loss(spec)


def test_lpips_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips -> ImportError
    monkeypatch.setattr(M, "_LPIPS_MODELS", {})
    assert not M.get_metric("lpips").available
    assert "lpips" not in M.list_metrics(available_only=True)
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(MemlensError, match=r"pip install 'memlens\[lpips\]'"):
        M.get_metric("lpips")(x, x)


def test_lpips_converts_inputs_to_minus_one_one(fake_lpips, pair):
    x, y = pair
    metric = M.get_metric("lpips")
    assert metric.available
    d = metric(x, y)
    assert d.shape == (5,)
    a, b = fake_lpips[-1]
    torch.testing.assert_close(a, x * 2 - 1)
    torch.testing.assert_close(b, y * 2 - 1)
    assert a.min() < -0.9 and a.max() > 0.9
    # the value is the package's distance as-is (here 0.25 * MSE on the [-1, 1] scale = MSE on [0, 1])
    torch.testing.assert_close(d, M.get_metric("mse")(x, y), rtol=1e-5, atol=1e-7)
    # built once per device, parameters frozen, but gradients reach the images
    model = M._LPIPS_MODELS["alex@cpu"]
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    yy = y.clone().requires_grad_(True)
    M.make_loss("lpips")(x, yy).backward()
    assert yy.grad.abs().sum() > 0
    assert M._LPIPS_MODELS["alex@cpu"] is model


@pytest.mark.parametrize(("name", "net"), [("lpips", "alex"), ("lpips-squeeze", "squeeze"), ("lpips-vgg", "vgg")])
def test_lpips_backbone_choice(fake_lpips, pair, name, net):
    """Each LPIPS variant builds the package's model with its own backbone (the paper used squeeze)."""
    x, y = pair
    M.get_metric(name)(x, y)
    assert M._LPIPS_MODELS[f"{net}@cpu"].net == net
    assert M.get_metric(name).column == f"recon_{name}"


def test_perceptual_definition(pair):
    x, y = pair
    ext = ToyExtractor()
    fx, fy = ext(x), ext(y)
    expected = 0
    for a, b in zip(fx, fy, strict=True):
        ua = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ub = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        # the squared distance of the unit feature vectors at each position: every layer weighs alike
        expected = expected + ((ua - ub) ** 2).sum(dim=1).mean(dim=(1, 2)) / len(fx)
    torch.testing.assert_close(M.perceptual_distance(x, y, extractor=ext), expected)
    # opposite unit vectors at every position of every layer: the largest value, 4
    opp = M.perceptual_from_features([torch.ones(2, 5, 3, 3), torch.ones(2, 40, 2, 2)],
                                     [-torch.ones(2, 5, 3, 3), -torch.ones(2, 40, 2, 2)])
    torch.testing.assert_close(opp, torch.full((2,), 4.0))
    with pytest.raises(ValueError, match="RGB"):
        M.perceptual_distance(x[:, :1], y[:, :1], extractor=ext)


def test_perceptual_with_efficientnet_features():
    pytest.importorskip("memlens.models.efficientnet", reason="memlens.models.efficientnet not available yet")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(6)
    x = torch.rand(3, 3, 64, 64, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    metric = M.get_metric("perceptual")
    d = metric(x, y)
    assert d.shape == (3,) and bool((d > 0).all()) and bool((d <= 4).all())
    assert torch.allclose(metric(x, x), torch.zeros(3), atol=1e-6)
    torch.testing.assert_close(metric(y, x), d, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(metric(x[1:2], y[1:2]), d[1:2], atol=1e-6, rtol=1e-5)
    ext = M._EXTRACTORS["cpu"]
    assert not ext.training
    metric(x, y)
    assert M._EXTRACTORS["cpu"] is ext  # built once and cached
    # more noise -> larger perceptual distance
    far = metric(x, (x + 0.4 * torch.randn(x.shape, generator=g)).clamp(0, 1))
    assert bool((far > d).all())


def test_lpips_without_its_backbone_weights_is_one_clear_line(monkeypatch):
    """An offline first use of LPIPS (torchvision cannot fetch the backbone) is a ConfigError naming the file."""
    import sys
    import types
    import urllib.error

    import memlens.metrics as M
    from memlens.errors import ConfigError

    fake = types.ModuleType("lpips")

    def refuse(**_kw):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    fake.LPIPS = refuse
    monkeypatch.setitem(sys.modules, "lpips", fake)
    monkeypatch.setattr(M, "_LPIPS_MODELS", {})
    with pytest.raises(ConfigError, match=r"squeezenet1_1-b8a52dc0\.pth.*checkpoints") as err:
        M.lpips_model(torch.device("cpu"), "squeeze")
    assert "\n" not in str(err.value)

    def broken(**_kw):  # any other failure is not dressed up as a download problem
        raise RuntimeError("size mismatch for lin0.model.1.weight")

    fake.LPIPS = broken
    with pytest.raises(RuntimeError, match="size mismatch"):
        M.lpips_model(torch.device("cpu"), "squeeze")
