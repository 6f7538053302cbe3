"""Behaviour of Differentiable Siamese Augmentation (poisonbook.augment; Zhao & Bilen 2021)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poisonbook import augment as A

torch.set_num_threads(1)

HYP = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dot_images(positions, size=32, channels=3):
    """One bright pixel per image at the given (row, col) positions."""
    x = torch.zeros(len(positions), channels, size, size)
    for i, (r, c) in enumerate(positions):
        x[i, :, r, c] = 1.0
    return x


def argmax_rc(img: torch.Tensor) -> tuple[int, int]:
    flat = int(img[0].argmax())
    return flat // img.shape[-1], flat % img.shape[-1]


# ------------------------------------------------------------------------ strategy and params


def test_strategy_constants_and_parsing():
    assert A.STRATEGY == "color_crop_cutout_flip_scale_rotate"
    assert A.STRATEGY_DIGITS == "color_crop_cutout_scale_rotate"
    assert A.parse_strategy(A.STRATEGY) == A.OPS
    assert "flip" not in A.parse_strategy(A.STRATEGY_DIGITS)
    assert A.parse_strategy(["crop", "rotate"]) == ("crop", "rotate")
    assert A.parse_strategy("") == () and A.parse_strategy("None") == ()


@pytest.mark.parametrize("bad", ["colour", "crop_shear", "crop__flip", ["zoom"]])
def test_unknown_op_raises_listing_valid_ops(bad):
    with pytest.raises(ValueError, match="valid ops are color, crop, cutout, flip, scale, rotate"):
        A.parse_strategy(bad)
    with pytest.raises(ValueError):
        A.dsa(torch.rand(2, 1, 8, 8), bad, seed=0)


def test_empty_strategy_is_identity():
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(A.dsa(x, "", seed=3), x)
    assert torch.equal(A.apply(x, A.draw("none", 2), torch.tensor([0, 1, 0, 1])), x)
    assert A.draw("", 2).op == ""


def test_strategy_for_datasets():
    for name in ["mnist", "MNIST", "mnist5k", "mnist-17", "digits", "svhn"]:
        assert A.strategy_for(name) == A.STRATEGY_DIGITS
    for name in ["fashion-mnist", "FashionMNIST", "cifar10", "cifar100", "tinyimagenet"]:
        assert A.strategy_for(name) == A.STRATEGY
    with pytest.raises(ValueError, match="no DSA strategy known"):
        A.strategy_for("my-dataset")


def test_dsaparams_reference_defaults_and_validation():
    p = A.DSAParams()
    assert (p.brightness, p.saturation, p.contrast) == (1.0, 2.0, 0.5)
    assert (p.ratio_crop_pad, p.ratio_cutout, p.prob_flip) == (0.125, 0.5, 0.5)
    assert (p.ratio_scale, p.ratio_rotate) == (1.2, 15.0)
    for bad in [dict(prob_flip=1.5), dict(ratio_scale=0.9), dict(brightness=-1.0), dict(contrast=math.nan)]:
        with pytest.raises(ValueError):
            A.DSAParams(**bad)


def test_drawn_parameters_lie_in_reference_ranges():
    d = A.draw(A.STRATEGY, 500, gen(0))
    assert d.brightness.abs().max() <= 0.5
    assert 0 <= d.saturation.min() and d.saturation.max() <= 2.0
    assert 0.5 <= d.contrast.min() and d.contrast.max() <= 1.5
    assert 1 / 1.2 - 1e-6 <= d.scale.min() and d.scale.max() <= 1.2 + 1e-6
    assert d.rotate.abs().max() <= math.radians(15) + 1e-6
    assert 0.35 < d.flip.float().mean() < 0.65
    assert d.crop_shift(32, 32).abs().max() == 4 and d.crop_shift(28, 28).abs().max() == 4
    # shifts cover {-4..4} uniformly-ish
    assert set(d.crop_shift(32, 32)[:, 0].tolist()) == set(range(-4, 5))


# ------------------------------------------------------------------------ Siamese sharing


@HYP
@given(
    op=st.sampled_from(A.OPS),
    channels=st.sampled_from([1, 3]),
    size=st.sampled_from([28, 32, 13]),
    n_real=st.integers(1, 5),
    n_extra=st.integers(0, 4),
    seed=st.integers(0, 10_000),
)
def test_same_draw_same_group_gives_identical_outputs_across_batches(
    op, channels, size, n_real, n_extra, seed
):
    """A real batch and a synthetic batch of one class (different sizes) get the same transform."""
    torch.manual_seed(seed)
    groups = 3
    d = A.draw(op, groups, gen(seed))
    shared = torch.rand(n_real, channels, size, size)
    extra = torch.rand(n_extra, channels, size, size)
    g = seed % groups
    real = torch.cat([shared, extra])
    real_gi = torch.cat([torch.full((n_real,), g), torch.randint(0, groups, (n_extra,))])
    out_real = A.apply(real, d, real_gi)
    out_syn = A.apply(shared.clone(), d, g)
    assert out_real.shape == real.shape and torch.isfinite(out_real).all()
    torch.testing.assert_close(out_real[:n_real], out_syn, rtol=0, atol=1e-6)
    # colour's contrast uses the per-image mean, so batch composition never leaks in
    torch.testing.assert_close(A.apply(shared[:1], d, g), out_syn[:1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("op", ["crop", "flip"])
def test_real_and_synthetic_batches_of_a_class_move_the_same_way(op):
    """Constructed dot images: every image of class c is displaced identically, real or synthetic."""
    positions_real = [(10, 11), (12, 14), (15, 9), (13, 13)]
    positions_syn = [(11, 12), (14, 10)]
    real, syn = dot_images(positions_real), dot_images(positions_syn)
    real_labels, syn_labels = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1])
    for seed in range(6):
        d = A.draw(op, 2, gen(seed))
        out_r, out_s = A.apply(real, d, real_labels), A.apply(syn, d, syn_labels)
        moves = {0: set(), 1: set()}
        for imgs, out, pos, lab in [(real, out_r, positions_real, real_labels),
                                    (syn, out_s, positions_syn, syn_labels)]:
            for i, (r, c) in enumerate(pos):
                assert out[i].max() == 1.0  # the dot survives (it is far from the border)
                rr, cc = argmax_rc(out[i])
                if op == "flip":  # a mirror maps column c to 31 - c; record whether it did
                    assert rr == r and cc in (c, 31 - c)
                    moves[int(lab[i])].add(cc == 31 - c)
                else:
                    moves[int(lab[i])].add((rr - r, cc - c))
        assert all(len(m) == 1 for m in moves.values()), moves


def test_siamese_rotation_of_real_and_synthetic_batches():
    """Rotate: a synthetic image equal to a real image of the same class is rotated identically."""
    torch.manual_seed(0)
    real = torch.rand(8, 3, 16, 16)
    labels = torch.arange(8) % 4
    syn = real[[5, 2]].clone().requires_grad_(True)
    d = A.draw("rotate", 4, gen(1))
    out_r, out_s = A.apply(real, d, labels), A.apply(syn, d, labels[[5, 2]])
    torch.testing.assert_close(out_s, out_r[[5, 2]], rtol=0, atol=1e-6)


def test_samples_in_different_groups_get_different_transforms():
    x = torch.rand(1, 3, 16, 16).expand(4, 3, 16, 16).contiguous()
    for op in ["rotate", "scale", "color", "crop", "cutout"]:
        d = A.draw(op, 4, gen(7))
        out = A.apply(x, d, torch.arange(4))
        distinct = {tuple(o.flatten()[:200].tolist()) for o in out}
        assert len(distinct) > 1, op
        # same group -> same output, even for a one-sample batch
        torch.testing.assert_close(A.apply(x[:1], d, 2)[0], out[2], rtol=0, atol=1e-6)


def test_per_group_op_choice_applies_each_groups_own_op():
    x = torch.rand(12, 3, 16, 16)
    gi = torch.arange(12) % 6
    d = A.draw(A.STRATEGY, 6, gen(3), per_group_op=True)
    assert d.op is None and len(set(d.group_ops)) > 1
    out = A.apply(x, d, gi)
    for i in range(12):
        g = int(gi[i])
        single = dataclasses.replace(d, choice=torch.full((6,), int(d.choice[g])))
        torch.testing.assert_close(out[i], A.apply(x[i : i + 1], single, g)[0], rtol=0, atol=1e-6)


def test_shared_op_by_default():
    for seed in range(5):
        d = A.draw(A.STRATEGY, 10, gen(seed))
        assert d.op in A.OPS and len(set(d.group_ops)) == 1


# ------------------------------------------------------------------------ seeds


def test_same_seed_same_output_and_draw():
    x = torch.rand(5, 3, 16, 16)
    gi = torch.tensor([0, 1, 2, 1, 0])
    for seed in range(12):
        torch.testing.assert_close(A.dsa(x, A.STRATEGY, seed, group_index=gi),
                                   A.dsa(x.clone(), A.STRATEGY, seed, group_index=gi), rtol=0, atol=0)
    d1, d2 = A.draw(A.STRATEGY, 3, gen(5)), A.draw(A.STRATEGY, 3, gen(5))
    for f in dataclasses.fields(A.Draw):
        a, b = getattr(d1, f.name), getattr(d2, f.name)
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_global_rng_is_used_without_generator():
    torch.manual_seed(11)
    d1 = A.draw(A.STRATEGY, 3)
    torch.manual_seed(11)
    d2 = A.draw(A.STRATEGY, 3)
    assert torch.equal(d1.rotate, d2.rotate) and torch.equal(d1.choice, d2.choice)


@pytest.mark.parametrize("op", A.OPS)
def test_different_seeds_give_different_transforms(op):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    outs = [A.dsa(x, op, seed) for seed in range(8)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    # and the full strategy picks different ops across seeds
    assert len({A.draw(A.STRATEGY, 1, gen(s)).op for s in range(40)}) == len(A.OPS)


def test_dsa_pair_with_same_seed_is_siamese():
    """dsa(real, s, seed) and dsa(syn, s, seed): the reference's DiffAugment(x, s, seed=seed) pair."""
    torch.manual_seed(1)
    real = torch.rand(6, 3, 16, 16)
    syn = real[:2].clone()
    for seed in range(6):
        torch.testing.assert_close(A.dsa(real, A.STRATEGY, seed)[:2], A.dsa(syn, A.STRATEGY, seed),
                                   rtol=0, atol=1e-6)


# ------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", A.OPS)
def test_gradient_flows_to_the_images(op, channels):
    x = torch.rand(4, channels, 12, 12, requires_grad=True)
    d = A.draw(op, 2, gen(0))
    if op == "flip":
        d = dataclasses.replace(d, flip=torch.tensor([True, False]))
    out = A.apply(x, d, torch.tensor([0, 1, 0, 1]))
    (out * torch.linspace(-1, 2, out.numel()).view_as(out)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(x.grad[i].abs().sum() > 0 for i in range(4))


def test_gradcheck_float64_all_ops():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    for op in A.OPS:
        d = A.draw(op, 2, gen(2))
        assert torch.autograd.gradcheck(lambda t: A.apply(t, d, torch.tensor([0, 1])), (x,))


# ------------------------------------------------------------------------ each op does what it says


def test_flip_mirrors_horizontally():
    x = torch.rand(3, 3, 10, 10)
    always = A.draw("flip", 1, gen(0), params=A.DSAParams(prob_flip=1.0))
    never = A.draw("flip", 1, gen(0), params=A.DSAParams(prob_flip=0.0))
    assert torch.equal(A.apply(x, always), x.flip(3))
    assert torch.equal(A.apply(x, never), x)


@pytest.mark.parametrize("size,side", [(32, 16), (28, 14), (64, 32)])
def test_cutout_zeroes_a_square_of_the_expected_size(size, side):
    x = torch.ones(64, 1, size, size) * 0.7
    d = A.draw("cutout", 64, gen(size))
    out = A.apply(x, d, torch.arange(64))
    boxes = d.cutout_box(size, size)
    assert (boxes[:, 2:] == side).all()
    interior = 0
    for i in range(64):
        zero = out[i, 0] == 0
        top, left = int(boxes[i, 0]), int(boxes[i, 1])
        rows = slice(max(top, 0), min(top + side, size))
        cols = slice(max(left, 0), min(left + side, size))
        assert zero[rows, cols].all()
        assert int(zero.sum()) == (rows.stop - rows.start) * (cols.stop - cols.start)
        assert torch.all(out[i, 0][~zero] == 0.7)  # the rest is untouched
        if 0 <= top and top + side <= size and 0 <= left and left + side <= size:
            assert int(zero.sum()) == side * side
            interior += 1
    assert interior > 0


def test_crop_translates_by_at_most_the_ratio_and_fills_with_zeros():
    size = 32
    x = dot_images([(16, 16)] * 100, size=size, channels=1)
    d = A.draw("crop", 100, gen(0))
    out = A.apply(x, d, torch.arange(100))
    shift = d.crop_shift(size, size)
    seen = set()
    for i in range(100):
        r, c = argmax_rc(out[i])
        assert (r - 16, c - 16) == tuple(shift[i].tolist())
        assert abs(r - 16) <= 4 and abs(c - 16) <= 4  # 0.125 * 32
        seen.add((r - 16, c - 16))
    assert len(seen) > 20
    # exact pixel move with zero fill, for every shift in {-2..2}^2 at 12x12: compare with slicing
    img = torch.rand(1, 2, 12, 12) + 0.1
    shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    u = torch.tensor([[(dy + 2.5) / 5, (dx + 2.5) / 5] for dy, dx in shifts])
    d25 = dataclasses.replace(A.draw("crop", 25), crop_u=u)
    assert d25.crop_shift(12, 12).tolist() == [list(s) for s in shifts]
    out = A.apply(img.expand(25, 2, 12, 12), d25, torch.arange(25))
    for k, (dy, dx) in enumerate(shifts):
        expected = torch.zeros_like(img[0])
        expected[:, max(dy, 0) : 12 + min(dy, 0), max(dx, 0) : 12 + min(dx, 0)] = img[
            0, :, max(-dy, 0) : 12 - max(dy, 0), max(-dx, 0) : 12 - max(dx, 0)
        ]
        assert torch.equal(out[k], expected), (dy, dx)


def test_rotate_keeps_the_centre_pixel_and_matches_rot90():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 29, 29)
    d = A.draw("rotate", 16, gen(0))
    out = A.apply(x, d, torch.arange(16))
    torch.testing.assert_close(out[..., 14, 14], x[..., 14, 14], rtol=0, atol=1e-5)
    assert not torch.allclose(out, x)
    quarter = dataclasses.replace(A.draw("rotate", 1), rotate=torch.tensor([math.pi / 2]))
    torch.testing.assert_close(A.apply(x, quarter), torch.rot90(x, 1, (2, 3)), rtol=0, atol=1e-5)
    zero = dataclasses.replace(quarter, rotate=torch.tensor([0.0]))
    torch.testing.assert_close(A.apply(x, zero), x, rtol=0, atol=1e-5)


def test_scale_keeps_the_centre_and_unit_scale_is_identity():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 27, 27)
    d = A.draw("scale", 8, gen(1))
    out = A.apply(x, d, torch.arange(8))
    torch.testing.assert_close(out[..., 13, 13], x[..., 13, 13], rtol=0, atol=1e-5)
    unit = dataclasses.replace(A.draw("scale", 1), scale=torch.tensor([[1.0, 1.0]]))
    torch.testing.assert_close(A.apply(x, unit), x, rtol=0, atol=1e-5)
    # sampling-grid factor 2 in x: content shrinks horizontally, right/left quarters become zero
    shrink = dataclasses.replace(unit, scale=torch.tensor([[2.0, 1.0]]))
    out = A.apply(torch.ones(1, 1, 16, 16), shrink)
    assert out[..., :, :3].abs().max() == 0 and out[..., :, -3:].abs().max() == 0
    assert torch.allclose(out[..., :, 5:11], torch.ones(1, 1, 16, 6))


def test_color_neutral_factors_are_identity_and_each_factor_acts():
    x = torch.rand(4, 3, 8, 8)
    neutral = dataclasses.replace(
        A.draw("color", 1),
        brightness=torch.tensor([0.0]), saturation=torch.tensor([1.0]), contrast=torch.tensor([1.0]),
    )
    torch.testing.assert_close(A.apply(x, neutral), x, rtol=0, atol=1e-6)
    bright = dataclasses.replace(neutral, brightness=torch.tensor([0.25]))
    torch.testing.assert_close(A.apply(x, bright), x + 0.25, rtol=0, atol=1e-6)
    grey = A.apply(x, dataclasses.replace(neutral, saturation=torch.tensor([0.0])))
    torch.testing.assert_close(grey, x.mean(1, keepdim=True).expand_as(x), rtol=0, atol=1e-6)
    flat = A.apply(x, dataclasses.replace(neutral, contrast=torch.tensor([0.0])))
    torch.testing.assert_close(flat, x.mean((1, 2, 3), keepdim=True).expand_as(x), rtol=0, atol=1e-6)
    # DSAParams(brightness=0): the brightness step is the identity
    d0 = A.draw("color", 1, gen(0), params=A.DSAParams(brightness=0.0))
    assert torch.all(d0.brightness == 0)


@pytest.mark.parametrize("channels", [1, 3])
def test_color_equals_the_reference_sequence(channels):
    """brightness -> saturation (channel mean) -> contrast (image mean), per group (reference order)."""
    torch.manual_seed(0)
    x = torch.rand(6, channels, 10, 10)
    gi = torch.tensor([0, 1, 2, 2, 1, 0])
    d = A.draw("color", 3, gen(4))
    b, s, c = (t[gi].view(-1, 1, 1, 1) for t in (d.brightness, d.saturation, d.contrast))
    y = x + b
    m = y.mean(1, keepdim=True)
    y = (y - m) * s + m
    m = y.mean((1, 2, 3), keepdim=True)
    y = (y - m) * c + m
    torch.testing.assert_close(A.apply(x, d, gi), y, rtol=0, atol=1e-5)


def test_saturation_on_one_channel_is_a_no_op():
    x = torch.rand(3, 1, 28, 28)
    base = dataclasses.replace(
        A.draw("color", 1),
        brightness=torch.tensor([0.1]), saturation=torch.tensor([1.0]), contrast=torch.tensor([1.3]),
    )
    out = A.apply(x, base)
    for s in [0.0, 0.5, 2.0]:
        torch.testing.assert_close(A.apply(x, dataclasses.replace(base, saturation=torch.tensor([s]))), out)


def test_augment_gives_each_sample_its_own_parameters():
    x = torch.rand(1, 3, 16, 16).expand(6, 3, 16, 16).contiguous()
    out = A.augment(x, "rotate", gen(0))
    assert len({round(float(o.sum()), 4) for o in out}) > 1
    assert torch.equal(A.augment(x, "rotate", gen(0)), out)


# ------------------------------------------------------------------------ shapes, dtypes, errors


@HYP
@given(
    strategy=st.sampled_from([A.STRATEGY, A.STRATEGY_DIGITS, "color", "crop_cutout", "scale_rotate"]),
    n=st.integers(1, 6),
    channels=st.sampled_from([1, 2, 3]),
    h=st.integers(2, 20),
    w=st.integers(2, 20),
    groups=st.integers(1, 4),
    per_group_op=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_any_shape_keeps_shape_dtype_and_is_finite(strategy, n, channels, h, w, groups, per_group_op, seed):
    x = torch.rand(n, channels, h, w, dtype=torch.float64)
    gi = torch.randint(0, groups, (n,), generator=gen(seed))
    d = A.draw(strategy, groups, gen(seed), per_group_op=per_group_op)
    out = A.apply(x, d, gi)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.isfinite(out).all()
    torch.testing.assert_close(A.apply(x, d, gi), out, rtol=0, atol=0)


def test_bad_inputs_raise_clear_errors():
    d = A.draw("crop", 3, gen(0))
    x = torch.rand(4, 3, 8, 8)
    with pytest.raises(ValueError, match="pass group_index"):
        A.apply(x, d)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        A.apply(x, d, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="shape"):
        A.apply(x, d, torch.tensor([0, 1]))
    with pytest.raises(TypeError):
        A.apply(x, d, torch.tensor([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="N, C, H, W"):
        A.apply(torch.rand(3, 8, 8), d, 0)
    with pytest.raises(ValueError, match="floating"):
        A.apply(torch.ones(1, 1, 8, 8, dtype=torch.long), d, 0)
    with pytest.raises(ValueError, match="groups"):
        A.draw("crop", 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = torch.rand(6, 3, 16, 16)
    gi = torch.tensor([0, 1, 2, 0, 1, 2])
    for seed in range(6):
        cpu = A.dsa(x, A.STRATEGY, seed, group_index=gi)
        gpu = A.dsa(x.cuda(), A.STRATEGY, seed, group_index=gi.cuda())
        assert gpu.is_cuda
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
