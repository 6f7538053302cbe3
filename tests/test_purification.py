"""Image shortcut squeezing (ISS; Liu et al. 2023): JPEG 10, grayscale, bit-depth reduction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from poisonbook import checks, data
from poisonbook.defend import purification as P


@pytest.fixture(scope="module")
def rgb():
    return data.subset(data.load("fashion-mnist-rgb", "test"), 20).x


def test_jpeg_at_quality_10_changes_the_image_more_than_quality_90(rgb):
    low, high = P.jpeg(rgb, 10), P.jpeg(rgb, 90)
    assert low.shape == rgb.shape and low.min() >= 0 and low.max() <= 1
    err_low, err_high = (low - rgb).abs().mean(), (high - rgb).abs().mean()
    assert err_low > 0.01 and err_low > 2 * err_high


def test_jpeg_works_on_grey_images():
    x = data.subset(data.load("fashion-mnist", "test"), 10).x
    out = P.jpeg(x)
    assert out.shape == x.shape and (out - x).abs().mean() > 0.005


def test_grayscale_has_equal_channels_and_matches_pillow(rgb):
    g = P.grayscale(rgb)
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])
    arr = (rgb.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    ref = np.stack([np.asarray(Image.fromarray(a, "RGB").convert("L")) for a in arr]) / 255.0  # ITU-R 601 in Pillow
    assert np.abs(g[:, 0].numpy() - ref).max() <= 1.5 / 255


def test_bit_depth_reduction_to_2_bits_has_4_levels_and_rounds_to_the_nearest(rgb):
    out = P.bit_depth_reduction(rgb, 2)
    assert torch.allclose(out.unique(), torch.tensor([0, 1 / 3, 2 / 3, 1.0]))
    assert (out - rgb).abs().max() <= 1 / 6 + 1e-6  # nearest of levels 1/3 apart
    assert len(P.bit_depth_reduction(rgb, levels=5).unique()) == 5  # the D-VAE repository's variant


@pytest.mark.parametrize("fn,error,word", [
    (lambda: P.jpeg(torch.rand(2, 3, 8, 8), quality=0), checks.BadInput, "quality"),
    (lambda: P.jpeg(torch.rand(2, 2, 8, 8)), checks.BadInput, "channels"),
    (lambda: P.grayscale(torch.rand(2, 1, 8, 8)), checks.BadInput, "channel"),
    (lambda: P.bit_depth_reduction(torch.rand(2, 3, 8, 8) * 3), checks.BadInput, "[0, 1]"),
    (lambda: P.bit_depth_reduction(torch.rand(2, 3, 8, 8), bits=0), checks.BadInput, "bits"),
    (lambda: P.iss(torch.rand(2, 3, 8, 8), "blur"), checks.BadInput, "method"),
], ids=["quality", "jpeg-channels", "gray-channels", "range", "bits", "method"])
def test_bad_input_gives_a_clear_error(fn, error, word):
    with pytest.raises(error) as info:
        fn()
    assert word in str(info.value)
