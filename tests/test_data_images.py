"""The image pipeline (decode, convert, resize, crop), the torch loader, and the decoded-image cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memlens.data import ImageCache, ImageDataset, load_image, make_loader, prepare_image, read_image
from memlens.data import images as images_mod
from memlens.errors import DataError

torch.set_num_threads(1)


def save(arr: np.ndarray, path: Path, mode: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode) if im.mode != mode else im
    im.save(path, **kw)
    return path


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def smooth(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image (JPEG-friendly, so decoded pixels are close to these)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [127 + 100 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * x + rng.uniform(0.5, 2) * y + rng.uniform()))
             for _ in range(3)]
    return np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------- conversions
def test_rgba_composited_on_white(tmp_path: Path):
    arr = np.zeros((2, 3, 4), np.uint8)
    arr[0, 0] = (255, 0, 0, 0)      # fully transparent red -> white
    arr[0, 1] = (0, 0, 0, 255)      # opaque black
    arr[0, 2] = (0, 0, 0, 128)      # half-transparent black -> mid grey
    arr[1, :] = (10, 200, 30, 255)
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(read_image(tmp_path / "a.png"))
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [0, 0, 0]
    assert abs(int(out[0, 2, 0]) - 127) <= 1 and len(set(out[0, 2].tolist())) == 1
    assert out[1, 1].tolist() == [10, 200, 30]


def test_la_palette_gray_cmyk(tmp_path: Path):
    la = np.array([[[0, 0], [100, 255]]], np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert np.asarray(read_image(tmp_path / "la.png")).tolist() == [[[255, 255, 255], [100, 100, 100]]]

    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 200, 50, 25] + [0] * (254 * 3))
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(read_image(tmp_path / "p.png")).tolist() == [[[255, 255, 255], [200, 50, 25]]]

    Image.fromarray(np.array([[0, 77, 255]], np.uint8), "L").save(tmp_path / "g.png")
    assert np.asarray(read_image(tmp_path / "g.png")).tolist() == [[[0] * 3, [77] * 3, [255] * 3]]

    cmyk = np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [255, 0, 0, 0]]], np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.tif")
    assert np.asarray(read_image(tmp_path / "c.tif")).tolist() == [[[255, 255, 255], [0, 0, 0], [0, 255, 255]]]


def test_16_bit_scaled_to_8_bit(tmp_path: Path):
    arr = np.array([[0, 257 * 100, 32896, 65535]], np.uint16)
    Image.fromarray(arr).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = np.asarray(read_image(tmp_path / "d.png"))
    assert out[0, :, 0].tolist() == [0, 100, 128, 255] and (out[..., 0] == out[..., 2]).all()


@pytest.mark.parametrize("orientation, expected_size, top_colour", [(1, (16, 8), None), (6, (8, 16), "red"),
                                                                     (8, (8, 16), "blue"), (3, (16, 8), None)])
def test_exif_orientation(tmp_path: Path, orientation, expected_size, top_colour):
    arr = np.zeros((8, 16, 3), np.uint8)
    arr[:, :8] = (255, 0, 0)   # left half red
    arr[:, 8:] = (0, 0, 255)   # right half blue
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(tmp_path / "r.png", exif=exif)
    out = np.asarray(read_image(tmp_path / "r.png")).astype(int)
    assert (out.shape[1], out.shape[0]) == expected_size
    if orientation == 6:  # rotate 90 degrees clockwise: the left (red) half is on top
        assert out[:8].mean(axis=(0, 1)).tolist() == [255, 0, 0] and out[8:, :, 2].min() == 255
    elif orientation == 8:  # 90 degrees counter-clockwise: the right (blue) half is on top
        assert out[:8, :, 2].min() == 255 and out[8:, :, 0].min() == 255
    elif orientation == 3:  # 180 degrees: blue on the left
        assert out[:, :8, 2].min() == 255 and out[:, 8:, 0].min() == 255
    else:
        assert out[:, :8, 0].min() == 255


def test_read_image_errors_name_the_file(tmp_path: Path):
    save(noise(50, 40), tmp_path / "big.png")
    with pytest.raises(DataError, match=r"big\.png: 40x50 = 2,000 pixels exceeds the decompression-bomb limit"):
        read_image(tmp_path / "big.png", max_pixels=1000)
    (tmp_path / "x.jpg").write_text("text")
    with pytest.raises(DataError, match=r"x\.jpg: not an image file"):
        read_image(tmp_path / "x.jpg")
    with pytest.raises(DataError, match=r"gone\.jpg: missing file"):
        read_image(tmp_path / "gone.jpg")


# ----------------------------------------------------------------------------------- resize and crop
def test_prepare_image_centre_crop_wide_and_tall():
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, :100] = (255, 0, 0)
    wide[:, 100:200] = (0, 255, 0)
    wide[:, 200:] = (0, 0, 255)
    out = prepare_image(Image.fromarray(wide), 30)
    assert out.shape == (30, 30, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    inner = out[:, 3:-3].astype(int)  # away from the colour edges (filter support)
    assert inner[..., 1].min() >= 250 and inner[..., 0].max() <= 5 and inner[..., 2].max() <= 5
    tall = np.transpose(wide, (1, 0, 2)).copy()
    out = prepare_image(Image.fromarray(tall), 30).astype(int)
    assert out[3:-3, :, 1].min() >= 250 and out[3:-3, :, 0].max() <= 5


def test_prepare_image_solid_colour_and_geometry():
    solid = np.full((48, 64, 3), (12, 34, 56), np.uint8)
    out = prepare_image(Image.fromarray(solid), 24)
    assert (out == (12, 34, 56)).all()
    # a column gradient: the crop is centred (64x48 -> 32x24, columns 4..27 kept)
    grad = np.repeat(np.repeat(np.linspace(0, 255, 64).astype(np.uint8)[None, :, None], 48, 0), 3, 2)
    out = prepare_image(Image.fromarray(grad), 24).astype(int)
    left, right = out[:, 0, 0].mean(), out[:, -1, 0].mean()
    assert abs((left + right) / 2 - 127.5) < 4 and right > left
    # upscaling works too
    assert prepare_image(Image.fromarray(solid[:5, :7]), 16).shape == (16, 16, 3)
    with pytest.raises(ValueError, match="size must be"):
        prepare_image(Image.fromarray(solid), 0)


def test_load_image_matches_read_and_prepare(tmp_path: Path):
    p = save(smooth(60, 90), tmp_path / "a.jpg", quality=95)
    np.testing.assert_array_equal(load_image(p, 32), prepare_image(read_image(p), 32))


def test_large_jpeg_reduced_decoding_is_close_to_full(tmp_path: Path):
    p = save(smooth(900, 1200, seed=4), tmp_path / "big.jpg", quality=95)
    fast = load_image(p, 32).astype(float)
    full = prepare_image(read_image(p), 32).astype(float)
    assert np.abs(fast - full).mean() < 1.0


# -------------------------------------------------------------------------------------- torch loader
@pytest.fixture
def collection(tmp_path: Path) -> list[Path]:
    shapes = [(40, 60), (60, 40), (50, 50), (33, 71), (64, 48), (20, 30), (45, 45)]
    return [save(noise(h, w, seed=i), tmp_path / "imgs" / f"{i}.png") for i, (h, w) in enumerate(shapes)]


def test_image_dataset_items(collection):
    ds = ImageDataset(collection, 16)
    assert isinstance(ds, torch.utils.data.Dataset) and len(ds) == 7
    x, i = ds[3]
    assert i == 3 and x.dtype == torch.float32 and x.shape == (3, 16, 16)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    expected = torch.from_numpy(load_image(collection[3], 16).transpose(2, 0, 1).astype(np.float32) / 255)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-7)


def test_image_batch_equals_the_loader(collection):
    from memlens.data import image_batch

    batch = image_batch(collection, 16)
    assert batch.shape == (7, 3, 16, 16) and batch.dtype == torch.float32
    loaded = torch.cat([b[0] for b in make_loader(collection, 16, batch_size=4)])
    assert torch.equal(batch, loaded)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_order_and_shapes(collection, workers):
    batches = list(make_loader(collection, 16, batch_size=3, num_workers=workers))
    assert [b[1].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    images = torch.cat([b[0] for b in batches])
    assert images.shape == (7, 3, 16, 16) and images.dtype == torch.float32
    reference = np.stack([load_image(p, 16) for p in collection]).transpose(0, 3, 1, 2).astype(np.float32) / 255
    torch.testing.assert_close(images, torch.from_numpy(reference), rtol=0, atol=1e-7)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_decoding_error_names_the_file(collection, tmp_path: Path, workers):
    bad = tmp_path / "imgs" / "broken.jpg"
    bad.write_bytes(collection[0].read_bytes()[:30])
    paths = [*collection[:4], bad, *collection[4:]]
    with pytest.raises(DataError) as err:
        for _ in make_loader(paths, 16, batch_size=2, num_workers=workers):
            pass
    message = str(err.value)
    assert message.startswith(str(bad)) and "Traceback" not in message and len(message.splitlines()) == 1


# -------------------------------------------------------------------------------------------- cache
def _count_decodes(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = images_mod._decode

    def counting(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(images_mod, "_decode", counting)
    return calls


def test_second_pass_decodes_nothing(collection, tmp_path: Path, monkeypatch):
    calls = _count_decodes(monkeypatch)
    cache = ImageCache(tmp_path / "cache")
    first = torch.cat([b[0] for b in make_loader(collection, 16, batch_size=4, cache=cache)])
    assert len(calls) == 7 and cache.misses == 7 and cache.hits == 0 and cache.n_entries() == 7
    calls.clear()
    second = torch.cat([b[0] for b in make_loader(collection, 16, batch_size=4, cache=cache)])
    assert calls == [] and cache.hits == 7
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    # another size is another entry
    load_image(collection[0], 8, cache=cache)
    assert len(calls) == 1 and cache.n_entries() == 8


def test_cache_keyed_by_content(collection, tmp_path: Path, monkeypatch):
    cache = ImageCache(tmp_path / "cache")
    original = load_image(collection[0], 16, cache=cache)
    calls = _count_decodes(monkeypatch)
    copy = shutil.copy(collection[0], tmp_path / "renamed.png")
    np.testing.assert_array_equal(load_image(copy, 16, cache=cache), original)  # same bytes: a hit
    assert calls == []
    save(noise(40, 60, seed=99), collection[0])  # new content under the same name: a miss
    changed = load_image(collection[0], 16, cache=cache)
    assert len(calls) == 1 and not np.array_equal(changed, original)


def test_cache_entries_are_memory_mappable_npy(collection, tmp_path: Path):
    cache = ImageCache(tmp_path / "cache")
    arr = load_image(collection[1], 16, cache=cache)
    entry = cache.entry(collection[1], 16)
    assert entry.suffix == ".npy" and entry.is_file()
    mm = np.load(entry, mmap_mode="r")
    assert isinstance(mm, np.memmap) and mm.dtype == np.uint8 and mm.shape == (16, 16, 3)
    np.testing.assert_array_equal(mm, arr)
    got = cache.get(collection[1], 16, mmap=True)
    assert isinstance(got, np.memmap) and not got.flags.writeable
    assert not list((tmp_path / "cache").rglob("*.tmp*"))  # written atomically: no leftovers
    with pytest.raises(ValueError, match="expected uint8"):
        cache.put(collection[1], 16, arr.astype(np.float32))


def test_damaged_entry_is_a_miss_and_rewritten(collection, tmp_path: Path):
    cache = ImageCache(tmp_path / "cache")
    arr = load_image(collection[2], 16, cache=cache)
    entry = cache.entry(collection[2], 16)
    entry.write_bytes(b"garbage")
    misses = cache.misses
    np.testing.assert_array_equal(load_image(collection[2], 16, cache=cache), arr)
    assert cache.misses == misses + 1
    np.testing.assert_array_equal(np.load(entry), arr)


def test_cache_with_two_workers(collection, tmp_path: Path, monkeypatch):
    cache = ImageCache(tmp_path / "cache")
    paths = collection + collection[:3]  # the same files twice: workers race on the same entries
    first = torch.cat([b[0] for b in make_loader(paths, 16, batch_size=2, num_workers=2, cache=cache)])
    assert cache.n_entries() == 7 and not list((tmp_path / "cache").rglob("*.tmp*"))
    calls = _count_decodes(monkeypatch)
    second = torch.cat([b[0] for b in make_loader(paths, 16, batch_size=5, num_workers=0, cache=cache)])
    assert calls == [] and cache.hits == 10
    torch.testing.assert_close(first, second, rtol=0, atol=0)
