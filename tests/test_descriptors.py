"""Visual descriptors against hand-computed values on synthetic images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from memlens.descriptors import (
    DESCRIPTOR_COLUMNS,
    center_share,
    colourfulness,
    image_descriptors,
    shannon_entropy_bits,
    visual_descriptors,
)


def _flat(h: int = 16, w: int = 16, rgb=(77, 153, 51)) -> np.ndarray:
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[...] = rgb
    return img


def _grey_u8(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.uint8)
    return np.repeat(v[..., None], 3, axis=-1)


@pytest.mark.parametrize("rgb", [(0, 0, 0), (255, 255, 255), (77, 153, 51)])
def test_flat_image_has_no_edges_no_entropy_and_flat_texture(rgb):
    d = image_descriptors(_flat(rgb=rgb))
    assert d["edge_density"] == 0.0
    assert d["grey_entropy"] == 0.0
    assert d["colour_entropy"] == 0.0
    assert d["glcm_contrast"] == 0.0
    assert d["glcm_energy"] == pytest.approx(1.0)
    assert d["glcm_homogeneity"] == pytest.approx(1.0)
    assert d["lab_l_sd"] == pytest.approx(0.0, abs=1e-9)


def test_flat_colourfulness_is_03_times_mean_opponent_magnitude():
    r, g, b = 77.0, 153.0, 51.0
    rg, yb = r - g, 0.5 * (r + g) - b
    expected = 0.3 * math.sqrt(rg**2 + yb**2)
    assert image_descriptors(_flat(rgb=(77, 153, 51)))["colourfulness"] == pytest.approx(expected, rel=1e-9)


def test_half_black_half_white_has_one_bit_and_edges():
    img = np.zeros((16, 16, 3), dtype=np.uint8)
    img[:, 8:] = 255
    d = image_descriptors(img)
    assert d["grey_entropy"] == 1.0
    assert d["colour_entropy"] == 1.0
    # one vertical step edge: Canny marks a one- or two-pixel-wide line over the full height
    assert 16 / 256 <= d["edge_density"] <= 32 / 256
    assert d["lab_l_mean"] == pytest.approx(50.0, abs=1e-6)  # L* of black 0, of white 100
    assert d["hsv_v_mean"] == pytest.approx(0.5)
    assert d["hsv_s_mean"] == pytest.approx(0.0)


def test_colourfulness_hand_computed_on_four_colours():
    # pixels red, green, blue, white (0-255 scale)
    img = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    # rg = R - G: 255, -255, 0, 0 -> mean 0, var (2 * 255^2) / 4
    # yb = (R + G)/2 - B: 127.5, 127.5, -255, 0 -> mean 0, var (2 * 127.5^2 + 255^2) / 4
    sigma = math.sqrt(2 * 255**2 / 4 + (2 * 127.5**2 + 255**2) / 4)
    assert colourfulness(img / 255.0) == pytest.approx(sigma, rel=1e-12)
    assert image_descriptors(img)["colourfulness"] == pytest.approx(sigma, rel=1e-12)


def test_glcm_hand_computed_on_2x2_image():
    # grey 0, 64, 128, 255 -> 32 levels (v * 32 // 256): 0, 8, 16, 31
    img = _grey_u8([[0, 64], [128, 255]])
    d = image_descriptors(img)
    # symmetric normalised GLCM, distance 1, one matrix per angle:
    #   0 deg: pairs (0,8), (16,31)     -> P = 1/4 on four cells
    #  90 deg: pairs (0,16), (8,31)     -> P = 1/4 on four cells
    #  45 deg: pair (16,8)              -> P = 1/2 on two cells
    # 135 deg: pair (31,0)              -> P = 1/2 on two cells
    contrast = [0.5 * 8**2 + 0.5 * 15**2, 0.5 * 16**2 + 0.5 * 23**2, 8**2, 31**2]
    energy = [math.sqrt(4 * 0.25**2), math.sqrt(4 * 0.25**2), math.sqrt(2 * 0.5**2), math.sqrt(2 * 0.5**2)]
    homog = [
        0.5 / (1 + 8**2) + 0.5 / (1 + 15**2),
        0.5 / (1 + 16**2) + 0.5 / (1 + 23**2),
        1 / (1 + 8**2),
        1 / (1 + 31**2),
    ]
    assert d["glcm_contrast"] == pytest.approx(sum(contrast) / 4, rel=1e-12)
    assert d["glcm_energy"] == pytest.approx(sum(energy) / 4, rel=1e-12)
    assert d["glcm_homogeneity"] == pytest.approx(sum(homog) / 4, rel=1e-12)


def test_grey_entropy_of_four_equal_levels_is_two_bits():
    img = _grey_u8(np.repeat(np.array([[0, 50, 100, 200]]), 4, axis=0))
    assert image_descriptors(img)["grey_entropy"] == pytest.approx(2.0, abs=1e-12)


def test_shannon_entropy_bits():
    assert shannon_entropy_bits([1, 1, 1, 1, 0, 0]) == pytest.approx(2.0)
    assert shannon_entropy_bits([3, 1]) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    assert math.isnan(shannon_entropy_bits([0, 0]))


def test_center_share_on_synthetic_maps():
    assert center_share(np.ones((8, 8))) == pytest.approx(0.25)
    inner = np.zeros((8, 8))
    inner[2:6, 2:6] = -3.0  # negative mass counts through |map|
    assert center_share(inner) == pytest.approx(1.0)
    corner = np.zeros((8, 8))
    corner[0, 0] = 1.0
    assert center_share(corner) == 0.0
    mixed = np.zeros((10, 10))
    mixed[5, 5], mixed[0, 9] = 3.0, 1.0  # centre box rows/cols 2..6 (round(5) = 5 wide, offset 2)
    assert center_share(mixed) == pytest.approx(0.75)
    assert center_share(np.ones((8, 8)), center_fraction=1.0) == pytest.approx(1.0)
    assert math.isnan(center_share(np.zeros((4, 4))))
    with pytest.raises(ValueError, match="center_fraction"):
        center_share(np.ones((4, 4)), center_fraction=0.0)


def test_visual_descriptors_table_formats_agree_and_maps_give_center_share():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(3, 12, 12, 3), dtype=np.uint8)
    f32 = torch.from_numpy(u8.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    maps = np.zeros((3, 1, 12, 12))
    maps[:, :, 3:9, 3:9] = 1.0
    a = visual_descriptors(u8, image_ids=["a", "b", "c"])
    b = visual_descriptors(f32, attribution_maps=maps)
    assert list(a.columns) == ["image_id", *DESCRIPTOR_COLUMNS]
    assert list(b.columns) == DESCRIPTOR_COLUMNS and len(b) == 3
    cols = [c for c in DESCRIPTOR_COLUMNS if c != "ig_center_share"]
    np.testing.assert_allclose(a[cols].to_numpy(), b[cols].to_numpy(), rtol=1e-5, atol=1e-5)
    assert a["ig_center_share"].isna().all()
    np.testing.assert_allclose(b["ig_center_share"], 1.0)
    # noise is busier than a flat image on every clutter measure
    assert (a["edge_density"] > 0).all() and (a["grey_entropy"] > 4).all()
    # a sequence with a missing map and a different image size
    c = visual_descriptors([u8[0], _flat(20, 10)], attribution_maps=[np.ones((12, 12)), None])
    assert c["ig_center_share"].iloc[0] == pytest.approx(36 / 144) and np.isnan(c["ig_center_share"].iloc[1])


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"observed min .*max 1\.5"):
        visual_descriptors(np.full((1, 3, 4, 4), 1.5, dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        visual_descriptors(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="2 attribution maps for 1 images"):
        visual_descriptors(_flat()[None], attribution_maps=np.ones((2, 16, 16)))
    with pytest.raises(ValueError, match="does not match"):
        visual_descriptors(_flat()[None], attribution_maps=np.ones((1, 8, 8)))


def test_hsv_means_are_skimages_definition():
    """Saturation and value are computed without rgb2hsv's hue, with its definitions (black and grey pixels
    have saturation 0)."""
    from skimage.color import rgb2hsv

    from memlens.descriptors import image_descriptors

    rng = np.random.default_rng(3)
    mixed = rng.random((24, 30, 3))
    mixed[:4] = 0.0  # black rows
    mixed[4:8] = 0.5  # grey rows
    for img in (mixed, np.zeros((6, 6, 3)), rng.random((9, 9, 3))):
        hsv = rgb2hsv(img)
        d = image_descriptors(img)
        assert d["hsv_s_mean"] == pytest.approx(float(hsv[..., 1].mean()), abs=1e-12)
        assert d["hsv_v_mean"] == pytest.approx(float(hsv[..., 2].mean()), abs=1e-12)
