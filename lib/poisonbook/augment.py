"""Differentiable Siamese Augmentation (DSA).

Zhao, B. and Bilen, H., "Dataset Condensation with Differentiable Siamese
Augmentation", ICML 2021 (DSA). DSA applies *the same* randomly parametrised,
differentiable augmentation A_w to the real batch and to the synthetic batch
of a class, so that matching (gradients in DC/DSA, mean embeddings in DM and
RDM-DC, Algorithm 3 "Sample the augmentation parameters w_c") compares like
with like while the synthetic images still receive gradients through A_w.

Reference settings (Zhao & Bilen 2021, and the authors' public code, "single"
mode): each call picks **one** op uniformly at random from the strategy,

* ``color``  -- brightness shift ``(u - 0.5) * 1.0``, then saturation factor
  ``u * 2.0`` (around the per-pixel channel mean), then contrast factor
  ``u + 0.5`` (around the per-image mean); all three are applied;
* ``crop``   -- integer translation by up to ``round(0.125 * size)`` pixels in
  each axis, zero fill (the reference's pad-and-crop);
* ``cutout`` -- zero a ``round(0.5 * H) x round(0.5 * W)`` square (clipped at the
  border) around a uniformly drawn centre;
* ``flip``   -- horizontal mirror with probability 0.5;
* ``scale``  -- independent x/y scale factors uniform in ``[1/1.2, 1.2]``;
* ``rotate`` -- rotation by an angle uniform in ``[-15, 15]`` degrees;

with ``u ~ U[0, 1)``. Strategy :data:`STRATEGY` =
``"color_crop_cutout_flip_scale_rotate"``; :data:`STRATEGY_DIGITS` drops
``flip`` for digit datasets (MNIST, SVHN), as the authors recommend.

Design. :func:`draw` samples the op and its parameters for ``G`` groups (one
parameter set per group, e.g. per class) from a :class:`torch.Generator`;
:func:`apply` applies a draw to a batch, each sample using the parameters of
its group (``group_index``). Applying one draw to the real batch and to the
synthetic batch (with their class labels as ``group_index``) is the Siamese
augmentation of all classes at once, with no Python loop over samples or
groups. :func:`dsa` draws and applies in one call (same seed, same transform);
:func:`augment` gives every sample its own parameters (the reference's
non-Siamese ``seed=-1`` mode, used when training an evaluation network).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import checks

__all__ = [
    "OPS",
    "STRATEGY",
    "STRATEGY_DIGITS",
    "DSAParams",
    "Draw",
    "parse_strategy",
    "strategy_for",
    "draw",
    "apply",
    "dsa",
    "augment",
]

#: The op names DSA knows, in the reference order.
OPS: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")

#: Full DSA strategy (Zhao & Bilen 2021): natural images, Fashion-MNIST, CIFAR, TinyImageNet.
STRATEGY = "color_crop_cutout_flip_scale_rotate"

#: DSA strategy for digit datasets (MNIST-like, SVHN): no ``flip``, since a mirrored digit
#: is not the same digit (authors' recommendation).
STRATEGY_DIGITS = "color_crop_cutout_scale_rotate"

# Normalised dataset names (lower case, without "-", "_", " ") for strategy_for().
_DIGIT_DATASETS = frozenset({"mnist", "mnist5k", "mnist17", "digits", "svhn", "emnist", "usps", "kmnist"})
_NATURAL_DATASETS = frozenset(
    {"fashionmnist", "fmnist", "cifar10", "cifar100", "tinyimagenet", "imagenet", "stl10", "celeba"}
)


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DSAParams:
    """Ranges of the DSA ops (Zhao & Bilen 2021, ICML; defaults = the authors' settings).

    Attributes:
        brightness: brightness shift ``(u - 0.5) * brightness``; default 1.0.
        saturation: saturation factor ``u * saturation``; default 2.0.
        contrast: contrast factor ``u + contrast``; default 0.5.
        ratio_crop_pad: largest translation as a fraction of the side,
            ``round(ratio * size)`` pixels; default 0.125 (4 px at 32, 4 px at 28).
        ratio_cutout: side of the cut-out square as a fraction of the image side,
            ``round(ratio * size)`` pixels; default 0.5.
        prob_flip: probability of a horizontal mirror; default 0.5.
        ratio_scale: scale factors uniform in ``[1/ratio, ratio]`` (x and y drawn
            independently); default 1.2.
        ratio_rotate: largest rotation angle in degrees, angle uniform in
            ``[-ratio, ratio]``; default 15.0.

    ``u`` is uniform on ``[0, 1)`` and drawn per group.
    """

    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"DSAParams.{f.name} must be a finite number >= 0, got {v!r}")
        if not 0.0 <= self.prob_flip <= 1.0:
            raise ValueError(f"DSAParams.prob_flip must lie in [0, 1], got {self.prob_flip}")
        if self.ratio_scale < 1.0:
            raise ValueError(f"DSAParams.ratio_scale must be >= 1 (range [1/r, r]), got {self.ratio_scale}")
        if self.ratio_crop_pad >= 1.0:
            raise ValueError(f"DSAParams.ratio_crop_pad must be < 1, got {self.ratio_crop_pad}")
        if self.ratio_cutout > 1.0:
            raise ValueError(f"DSAParams.ratio_cutout must lie in [0, 1], got {self.ratio_cutout}")


def parse_strategy(strategy: str | Sequence[str]) -> tuple[str, ...]:
    """Split a DSA strategy such as ``"color_crop_flip"`` into its op names.

    ``""``, ``"none"`` (any case) or an empty sequence mean the identity (no op).
    A sequence of names is accepted as well. Unknown names raise :class:`ValueError`
    listing the valid ones (:data:`OPS`).
    """
    if isinstance(strategy, str):
        s = strategy.strip()
        if s == "" or s.lower() == "none":
            return ()
        names = s.split("_")
    else:
        names = list(strategy)
    bad = [n for n in names if n not in OPS]
    if bad:
        raise ValueError(
            f"unknown DSA op(s) {bad} in strategy {strategy!r}; valid ops are {', '.join(OPS)} "
            f"joined by '_' (e.g. {STRATEGY!r}), or '' / 'none' for no augmentation"
        )
    return tuple(names)


def strategy_for(dataset_name: str) -> str:
    """The reference DSA strategy for a dataset (Zhao & Bilen 2021, authors' README).

    Digit datasets (``mnist``, ``mnist5k``, ``mnist-17``, ``digits``, ``svhn``, ...) get
    :data:`STRATEGY_DIGITS` (no ``flip``); natural-image datasets (``fashion-mnist``,
    ``cifar10``, ``cifar100``, ``tinyimagenet``, ...) get :data:`STRATEGY`. Case,
    ``-``, ``_`` and spaces are ignored. An unknown name raises :class:`ValueError`.
    """
    if not isinstance(dataset_name, str):
        raise TypeError(f"dataset_name must be a str, got {type(dataset_name).__name__}")
    key = dataset_name.lower().replace("-", "").replace("_", "").replace(" ", "")
    if key in _DIGIT_DATASETS:
        return STRATEGY_DIGITS
    if key in _NATURAL_DATASETS:
        return STRATEGY
    raise ValueError(
        f"no DSA strategy known for dataset {dataset_name!r}; digit datasets "
        f"({', '.join(sorted(_DIGIT_DATASETS))}) use {STRATEGY_DIGITS!r}, natural-image datasets "
        f"({', '.join(sorted(_NATURAL_DATASETS))}) use {STRATEGY!r}; pass one of them explicitly"
    )


# --------------------------------------------------------------------------------------------
# the draw
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Draw:
    """One DSA draw: the chosen op(s) and random parameters for ``G`` groups.

    Produced by :func:`draw`; consumed by :func:`apply`. Parameters of every op are
    drawn for every group (so the random stream does not depend on the op chosen),
    stored as *effective* values so that a draw can be built or edited by hand
    (``dataclasses.replace``) and inspected:

    Attributes:
        ops: the strategy's op names (``()`` = identity).
        choice: ``(G,)`` long, CPU; index into ``ops`` of the op each group applies
            (all equal unless drawn with ``per_group_op=True``).
        brightness: ``(G,)`` additive brightness shift, ``(u - 0.5) * brightness``.
        saturation: ``(G,)`` saturation factor, ``u * saturation``.
        contrast: ``(G,)`` contrast factor, ``u + contrast``.
        crop_u: ``(G, 2)`` uniforms in ``[0, 1)`` for the (row, column) translation;
            see :meth:`crop_shift` for the pixels they mean at a given image size.
        cutout_u: ``(G, 2)`` uniforms in ``[0, 1)`` for the (row, column) centre of the
            cut-out; see :meth:`cutout_box`.
        flip: ``(G,)`` bool, mirror horizontally.
        scale: ``(G, 2)`` scale factors ``(s_x, s_y)`` of the sampling grid (> 1 shrinks
            the content).
        rotate: ``(G,)`` rotation angle in radians.
        params: the :class:`DSAParams` the draw was made with (ratios for crop/cutout).
    """

    ops: tuple[str, ...]
    choice: torch.Tensor
    brightness: torch.Tensor
    saturation: torch.Tensor
    contrast: torch.Tensor
    crop_u: torch.Tensor
    cutout_u: torch.Tensor
    flip: torch.Tensor
    scale: torch.Tensor
    rotate: torch.Tensor
    params: DSAParams = DSAParams()

    def __post_init__(self) -> None:
        g = self.choice.shape[0] if self.choice.dim() == 1 else -1
        if g < 1:
            raise ValueError(f"Draw.choice must have shape (G,) with G >= 1, got {tuple(self.choice.shape)}")
        for name in ("brightness", "saturation", "contrast", "flip", "rotate"):
            t = getattr(self, name)
            if tuple(t.shape) != (g,):
                raise ValueError(f"Draw.{name} must have shape ({g},), got {tuple(t.shape)}")
        for name in ("crop_u", "cutout_u", "scale"):
            t = getattr(self, name)
            if tuple(t.shape) != (g, 2):
                raise ValueError(f"Draw.{name} must have shape ({g}, 2), got {tuple(t.shape)}")
        if self.ops and (int(self.choice.min()) < 0 or int(self.choice.max()) >= len(self.ops)):
            raise ValueError(f"Draw.choice must index ops {self.ops}, got {self.choice.tolist()}")

    @property
    def groups(self) -> int:
        """Number of parameter groups ``G``."""
        return int(self.choice.shape[0])

    @property
    def op(self) -> str | None:
        """The op all groups apply; ``""`` for the identity strategy, ``None`` if groups differ."""
        if not self.ops:
            return ""
        used = set(self.choice.tolist())
        return self.ops[used.pop()] if len(used) == 1 else None

    @property
    def group_ops(self) -> list[str]:
        """The op name of each group (``""`` for the identity strategy)."""
        if not self.ops:
            return [""] * self.groups
        return [self.ops[i] for i in self.choice.tolist()]

    def to(self, device: torch.device | str | None) -> Draw:
        """The same draw with its parameter tensors on ``device`` (``choice`` stays on CPU)."""
        if device is None:
            return self
        moved = {
            n: getattr(self, n).to(device)
            for n in ("brightness", "saturation", "contrast", "crop_u", "cutout_u", "flip", "scale", "rotate")
        }
        return dataclasses.replace(self, **moved)

    def crop_shift(self, height: int, width: int) -> torch.Tensor:
        """``(G, 2)`` long: the (row, column) pixel translation of the content at this size.

        Uniform on ``{-s, ..., s}`` with ``s = int(size * ratio_crop_pad + 0.5)`` (4 at 28 and 32).
        """
        return _crop_shift(self.crop_u, height, width, self.params.ratio_crop_pad)

    def cutout_box(self, height: int, width: int) -> torch.Tensor:
        """``(G, 4)`` long: ``(top, left, h, w)`` of the cut-out square *before* clipping.

        ``h = int(height * ratio_cutout + 0.5)`` (likewise ``w``); the zeroed pixels are
        the intersection of this box with the image, as in the reference.
        """
        top, left, sh, sw = _cutout_box(self.cutout_u, height, width, self.params.ratio_cutout)
        return torch.stack([top, left, torch.full_like(top, sh), torch.full_like(left, sw)], dim=1)


def draw(
    strategy: str | Sequence[str],
    groups: int = 1,
    generator: torch.Generator | None = None,
    params: DSAParams = DSAParams(),
    device: torch.device | str | None = None,
    per_group_op: bool = False,
) -> Draw:
    """Draw DSA parameters for ``groups`` groups (Zhao & Bilen 2021, "single" mode).

    One op is chosen uniformly from the strategy for the whole draw
    (``per_group_op=False``, default) or independently for each group
    (``per_group_op=True``: like calling the reference once per class with a
    different seed, as the DM / RDM-DC class loop does). Each group gets its own
    parameters for every op. Everything is drawn on the generator's device (the
    global CPU RNG when ``generator`` is None), so a seeded generator gives the
    same draw on any ``device``; the parameter tensors are then moved to ``device``.

    Args:
        strategy: e.g. :data:`STRATEGY`; ``""``/``"none"`` = identity.
        groups: number of parameter sets ``G`` (e.g. the number of classes).
        generator: source of randomness (reproducible draws).
        params: op ranges, :class:`DSAParams` (reference defaults).
        device: where the parameter tensors live (``apply`` moves them anyway).
        per_group_op: choose the op per group instead of once.
    """
    ops = parse_strategy(strategy)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be an int >= 1, got {groups!r}")
    if not isinstance(params, DSAParams):
        raise TypeError(f"params must be a DSAParams, got {type(params).__name__}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    kw = {"generator": generator, "device": gen_device}
    k = max(len(ops), 1)
    if per_group_op:
        choice = torch.randint(0, k, (groups,), **kw)
    else:
        choice = torch.randint(0, k, (1,), **kw).expand(groups).clone()
    u = torch.rand(groups, 11, dtype=torch.float64, **kw)
    p = params
    r = p.ratio_scale
    angle = (u[:, 10] - 0.5) * 2.0 * math.radians(p.ratio_rotate)
    out = Draw(
        ops=ops,
        choice=choice.cpu(),
        brightness=((u[:, 0] - 0.5) * p.brightness).float(),
        saturation=(u[:, 1] * p.saturation).float(),
        contrast=(u[:, 2] + p.contrast).float(),
        crop_u=u[:, 3:5].float().clamp(max=1.0 - 1e-6),
        cutout_u=u[:, 5:7].float().clamp(max=1.0 - 1e-6),
        flip=u[:, 7] < p.prob_flip,
        scale=(u[:, 8:10] * (r - 1.0 / r) + 1.0 / r).float(),
        rotate=angle.float(),
        params=p,
    )
    return out.to(device) if device is not None else out


# --------------------------------------------------------------------------------------------
# the ops (batched; per-sample parameters gathered by group index)
# --------------------------------------------------------------------------------------------


def _crop_shift(crop_u: torch.Tensor, h: int, w: int, ratio: float) -> torch.Tensor:
    s = torch.tensor([int(h * ratio + 0.5), int(w * ratio + 0.5)], device=crop_u.device)
    shift = torch.floor(crop_u * (2 * s + 1)).long() - s
    return torch.minimum(torch.maximum(shift, -s), s)


def _cutout_box(cutout_u: torch.Tensor, h: int, w: int, ratio: float):
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # centre uniform on {0, ..., H - 1 + (1 - sh % 2)} as in the reference
    nh, nw = h + (1 - sh % 2), w + (1 - sw % 2)
    cy = torch.floor(cutout_u[:, 0] * nh).long().clamp(0, nh - 1)
    cx = torch.floor(cutout_u[:, 1] * nw).long().clamp(0, nw - 1)
    return cy - sh // 2, cx - sw // 2, sh, sw


def _per_sample(t: torch.Tensor, gi: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Group parameter ``t`` (G,) -> (N, 1, 1, 1) in x's dtype and device."""
    return t.to(device=x.device, dtype=x.dtype).index_select(0, gi).view(-1, 1, 1, 1)


def _color(x: torch.Tensor, d: Draw, gi: torch.Tensor) -> torch.Tensor:
    # Reference order: brightness y1 = x + b; saturation y2 = s (y1 - mc1) + mc1 around the
    # per-pixel channel mean mc1; contrast y3 = c (y2 - m2) + m2 around the per-image mean m2.
    # Since saturation keeps the channel mean and mc1 = mc + b, m2 = ma + b (mc, ma: the channel
    # and image means of x), the three compose exactly to
    #     y3 = c s x + c (1 - s) mc + (1 - c) ma + b,
    # computed in one fused pass. With one channel mc = x, so saturation is a no-op.
    b = _per_sample(d.brightness, gi, x)
    c = _per_sample(d.contrast, gi, x)
    ma = x.mean(dim=(1, 2, 3), keepdim=True)
    offset = (1 - c) * ma + b
    if x.shape[1] == 1:
        return torch.addcmul(offset, c, x)
    s = _per_sample(d.saturation, gi, x)
    mc = x.mean(dim=1, keepdim=True)
    return torch.addcmul(offset, c * s, x) + (c * (1 - s)) * mc


def _crop(x: torch.Tensor, d: Draw, gi: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    shift = _crop_shift(d.crop_u.to(x.device), h, w, d.params.ratio_crop_pad).index_select(0, gi)
    # out[i, j] = x[i - dy, j - dx], zero outside: one gather over the flattened image plus a
    # validity mask (an exact integer move like the reference's pad-and-crop; no interpolation).
    r = torch.arange(h, device=x.device).view(1, h, 1) - shift[:, 0].view(n, 1, 1)
    q = torch.arange(w, device=x.device).view(1, 1, w) - shift[:, 1].view(n, 1, 1)
    valid = (r >= 0) & (r < h) & (q >= 0) & (q < w)  # (N, H, W)
    idx = (r.clamp(0, h - 1) * w + q.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    out = x.reshape(n, c, h * w).gather(2, idx) * valid.view(n, 1, h * w).to(x.dtype)
    return out.view(n, c, h, w)


def _cutout(x: torch.Tensor, d: Draw, gi: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    top, left, sh, sw = _cutout_box(d.cutout_u.to(x.device), h, w, d.params.ratio_cutout)
    if sh == 0 or sw == 0:
        return x
    top, left = top.index_select(0, gi), left.index_select(0, gi)
    r = torch.arange(h, device=x.device).unsqueeze(0)
    col = torch.arange(w, device=x.device).unsqueeze(0)
    in_r = (r >= top.unsqueeze(1)) & (r < (top + sh).unsqueeze(1))  # (N, H)
    in_c = (col >= left.unsqueeze(1)) & (col < (left + sw).unsqueeze(1))  # (N, W)
    keep = ~(in_r.unsqueeze(2) & in_c.unsqueeze(1))  # (N, H, W)
    return x * keep.unsqueeze(1).to(x.dtype)


def _flip(x: torch.Tensor, d: Draw, gi: torch.Tensor) -> torch.Tensor:
    f = d.flip.to(x.device).index_select(0, gi).view(-1, 1, 1, 1)
    return torch.where(f, x.flip(3), x)


def _affine(x: torch.Tensor, theta_g: torch.Tensor, gi: torch.Tensor) -> torch.Tensor:
    theta = theta_g.to(device=x.device, dtype=x.dtype).index_select(0, gi)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _scale(x: torch.Tensor, d: Draw, gi: torch.Tensor) -> torch.Tensor:
    s = d.scale
    z = torch.zeros_like(s[:, 0])
    theta = torch.stack([torch.stack([s[:, 0], z, z], 1), torch.stack([z, s[:, 1], z], 1)], 1)
    return _affine(x, theta, gi)


def _rotate(x: torch.Tensor, d: Draw, gi: torch.Tensor) -> torch.Tensor:
    a = d.rotate
    cos, sin, z = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, -sin, z], 1), torch.stack([sin, cos, z], 1)], 1)
    return _affine(x, theta, gi)


_OP_FNS = {
    "color": _color,
    "crop": _crop,
    "cutout": _cutout,
    "flip": _flip,
    "scale": _scale,
    "rotate": _rotate,
}


# --------------------------------------------------------------------------------------------
# applying
# --------------------------------------------------------------------------------------------


def _check_x(x) -> None:
    """Images of any range (DSA runs in standardised coordinates) and dtype, at least 2x2 pixels."""
    checks.images(x, "x", domain=None, min_count=0, where="augment")
    if x.shape[2] < 2 or x.shape[3] < 2:
        raise checks.BadInput(f"augment: x must have images of at least 2x2 pixels, got {tuple(x.shape[2:])}")


def _group_index(x: torch.Tensor, d: Draw, group_index) -> torch.Tensor:
    n = x.shape[0]
    if group_index is None:
        if d.groups != 1:
            raise ValueError(
                f"the draw has {d.groups} groups: pass group_index (shape ({n},)) saying which "
                f"group's parameters each sample uses"
            )
        return torch.zeros(n, dtype=torch.long, device=x.device)
    if isinstance(group_index, int) and not isinstance(group_index, bool):
        if not 0 <= group_index < d.groups:
            raise ValueError(f"group_index {group_index} out of range for a draw with {d.groups} groups")
        return torch.full((n,), group_index, dtype=torch.long, device=x.device)
    if not isinstance(group_index, torch.Tensor):
        raise TypeError(f"group_index must be None, an int or a LongTensor, got {type(group_index).__name__}")
    if group_index.dtype.is_floating_point or group_index.dtype.is_complex or group_index.dtype == torch.bool:
        raise TypeError(f"group_index must be an integer tensor, got dtype {group_index.dtype}")
    if tuple(group_index.shape) != (n,):
        raise ValueError(f"group_index must have shape ({n},) to match x, got {tuple(group_index.shape)}")
    gi = group_index.to(device=x.device, dtype=torch.long)
    if n and bool(((gi < 0) | (gi >= d.groups)).any()):
        raise ValueError(
            f"group_index values must lie in [0, {d.groups}), got min {int(gi.min())}, max {int(gi.max())}"
        )
    return gi


def apply(x: torch.Tensor, draw: Draw, group_index: torch.Tensor | int | None = None) -> torch.Tensor:
    """Apply a DSA draw to ``x`` (Zhao & Bilen 2021): ``A_w(x)``, differentiable in ``x``.

    Args:
        x: images ``(N, C, H, W)``, floating point, roughly in ``[0, 1]`` (any
            normalisation works; brightness shifts are in the units of ``x``).
        draw: from :func:`draw`.
        group_index: ``(N,)`` integer tensor, the group (e.g. class) whose parameters
            each sample uses; an ``int`` for "all samples in this group"; ``None`` only
            for a one-group draw.

    Applying the same draw to a real and a synthetic batch with their labels as
    ``group_index`` is the Siamese augmentation: identical op and parameters per
    class. The result stays on ``x``'s device and dtype; gradients flow to ``x``.
    Crop and flip are exact pixel moves, cutout a mask, colour per-sample affine
    maps, scale/rotate bilinear ``grid_sample`` (zero padding, ``align_corners=False``
    as in the reference).
    """
    if not isinstance(draw, Draw):
        raise TypeError(f"draw must be a Draw (from augment.draw), got {type(draw).__name__}")
    _check_x(x)
    gi = _group_index(x, draw, group_index)
    if not draw.ops or x.shape[0] == 0:
        return x
    used = sorted(set(draw.choice.tolist()))
    if len(used) == 1:
        return _OP_FNS[draw.ops[used[0]]](x, draw, gi)
    # Different groups use different ops: each op runs once on the samples whose group chose it.
    op_of_sample = draw.choice.to(x.device).index_select(0, gi)
    outs, idxs = [], []
    for k in used:
        idx = (op_of_sample == k).nonzero(as_tuple=True)[0]
        if idx.numel():
            outs.append(_OP_FNS[draw.ops[k]](x.index_select(0, idx), draw, gi.index_select(0, idx)))
            idxs.append(idx)
    order = torch.cat(idxs)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return torch.cat(outs).index_select(0, inverse)


def dsa(
    x: torch.Tensor,
    strategy: str | Sequence[str],
    seed: int,
    params: DSAParams = DSAParams(),
    group_index: torch.Tensor | int | None = None,
    groups: int | None = None,
    per_group_op: bool = False,
) -> torch.Tensor:
    """Draw with ``seed`` and apply in one call (Zhao & Bilen 2021, DSA).

    Same ``seed`` (and same ``strategy``, ``params``, ``groups``) => same transform, on
    any device: calling ``dsa(x_real, s, seed)`` and ``dsa(x_syn, s, seed)`` is the
    reference's Siamese pair ``DiffAugment(x, s, seed=seed)``. With ``group_index``
    the number of groups defaults to ``group_index.max() + 1``; pass ``groups``
    explicitly when two batches may not contain the same largest group.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if groups is None:
        if isinstance(group_index, torch.Tensor) and group_index.numel():
            groups = int(group_index.max()) + 1
        elif isinstance(group_index, int) and not isinstance(group_index, bool):
            groups = group_index + 1
        else:
            groups = 1
    gen = torch.Generator(device="cpu").manual_seed(seed)
    d = draw(strategy, groups, generator=gen, params=params, device=x.device, per_group_op=per_group_op)
    return apply(x, d, group_index)


def augment(
    x: torch.Tensor,
    strategy: str | Sequence[str],
    generator: torch.Generator | None = None,
    params: DSAParams = DSAParams(),
) -> torch.Tensor:
    """Non-Siamese DSA: one op for the batch, independent parameters per sample.

    The reference's ``DiffAugment(x, strategy, seed=-1)``, used when training a
    network on a synthetic set ("1,000 epochs with DSA augmentation"; Zhao & Bilen
    2021). Randomness from ``generator`` (global CPU RNG if None).
    """
    _check_x(x)
    parse_strategy(strategy)
    n = x.shape[0]
    if n == 0:
        return x
    d = draw(strategy, n, generator=generator, params=params, device=x.device)
    return apply(x, d, torch.arange(n, device=x.device))
