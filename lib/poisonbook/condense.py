"""Dataset condensation: DC, DSA and DM, and the protocol that evaluates a synthetic set.

Papers (the book's Part I):

* **DC**: Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021,
  Algorithm 1: match the gradients of a network's loss on a real and on a synthetic batch
  of each class, along the network's own training trajectory.
* **DSA**: Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation",
  ICML 2021: DC with the same random, differentiable augmentation ``A_w`` applied to the
  real and the synthetic batch of a class (:mod:`poisonbook.augment`).
* **DM**: Zhao & Bilen, "Dataset Condensation with Distribution Matching" (arXiv 2110.04181,
  WACV 2023): match the mean embeddings of real and synthetic images of each class under
  freshly sampled, untrained networks; the loss is eq. (2) of Zheng & Li, *RDM-DC* (UAI 2023)
  (``papers/000``), and the class loop is their Algorithm 3 with the plain mean as estimator.

Where the papers are silent the defaults follow the authors' public code (the book's
``REFERENCE-FACTS``): ConvNet width 128, depth 3; DM 20,000 iterations, image lr 1.0, momentum
0.5, 256 real images per class; DC 1,000 iterations, image lr 0.1, momentum 0.5, network lr
0.01, 256 real images per class, loops (outer, inner) = (1, 1), (10, 50), (50, 10) for 1, 10,
50 images per class.

Coordinates. The reference code condenses *standardised* images (per-channel mean 0, std 1),
and its learning rates and augmentation magnitudes are in those units. Every function here
therefore standardises the real images with per-channel statistics (computed from the real
training images unless ``stats`` is given), runs the algorithm in standardised coordinates,
and returns the synthetic images mapped back to the caller's coordinates (``[0, 1]`` for
:mod:`poisonbook.data`; they are *not* clipped, as in the reference). :func:`evaluate_synthetic`
trains and tests in the same standardised coordinates.

Randomness. All draws (network initialisations, real batches, augmentation parameters,
noise initialisation) come from one ``torch.Generator`` seeded with ``seed`` and saved in the
checkpoint, so a run killed half way and resumed ends with the same synthetic set as an
uninterrupted run. Tensors stay on the device of the real images ``x``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import augment as aug
from . import checks, models
from .cache import Checkpoint, fingerprint
from .data import ClassSampler
from .train import fit, predict

__all__ = [
    "DC_LOOPS",
    "DM_DEFAULTS",
    "DC_DEFAULTS",
    "EVAL_DEFAULTS",
    "INITS",
    "Estimator",
    "Condensed",
    "Evaluation",
    "Standardize",
    "channel_stats",
    "feature_mean",
    "per_class",
    "callable_key",
    "estimate_real",
    "dm_loss",
    "match_distance",
    "cross_entropy_loss",
    "dm",
    "dc",
    "dsa",
    "CurvatureLoss",
    "guard",
    "random_subset",
    "evaluate_synthetic",
]

#: (outer_loop, inner_loop) of DC/DSA by images per class (authors' code). ``outer_loop`` is the
#: number of synthetic-image updates per network initialisation (the paper's inner loop T);
#: ``inner_loop`` the number of network-training epochs on the synthetic set between two of them.
DC_LOOPS: dict[int, tuple[int, int]] = {1: (1, 1), 10: (10, 50), 50: (50, 10)}

#: DM defaults (Zhao & Bilen 2021b; RDM-DC Sec. 5.1).
DM_DEFAULTS = dict(iterations=20_000, lr=1.0, momentum=0.5, batch_real=256, width=128)
#: DC/DSA defaults (Zhao et al. 2021; Zhao & Bilen 2021a).
DC_DEFAULTS = dict(iterations=1_000, lr_img=0.1, momentum=0.5, lr_net=0.01, batch_real=256,
                   batch_train=256, width=128)
#: Evaluation protocol (DC/DSA/DM): SGD lr 0.01, momentum 0.9, weight decay 5e-4, lr x0.1 at half
#: the epochs, batch 256; 300 epochs without augmentation (DC), 1,000 with DSA augmentation (DSA, DM).
EVAL_DEFAULTS = dict(lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=256, epochs_dc=300,
                     epochs_dsa=1000, width=128)

INITS = ("noise", "real")

#: A real-mean estimator: features ``(C, n, d)`` (C classes, n real images each) -> ``(C, d)``.
Estimator = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- small pieces


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of images ``x`` (N, C, H, W), each of shape (C,).

    The reference code standardises with fixed per-dataset constants that are exactly these
    statistics of the training set (e.g. MNIST 0.1307 / 0.3081).
    """
    x = checks.images(x, "x", domain=None, where="channel_stats")
    if x.shape[0] * x.shape[2] * x.shape[3] < 2:
        raise checks.BadInput(f"channel_stats: x must hold at least 2 pixel values per channel for a "
                              f"standard deviation, got shape {tuple(x.shape)}")
    xd = x.double()
    return xd.mean(dim=(0, 2, 3)).float(), xd.std(dim=(0, 2, 3)).clamp_min(1e-8).float()


class Standardize(nn.Module):
    """``(x - mean) / std`` per channel, as a module (in front of a network trained on standardised data)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _standardizer(x: torch.Tensor, stats) -> tuple[torch.Tensor, torch.Tensor]:
    if stats is None:
        mean, std = channel_stats(x)
    else:
        mean, std = (torch.as_tensor(s, dtype=torch.float32).flatten() for s in stats)
        if mean.shape != (x.shape[1],) or std.shape != (x.shape[1],):
            raise ValueError(f"stats must be (mean, std) with {x.shape[1]} values each (one per channel), "
                             f"got shapes {tuple(mean.shape)} and {tuple(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError("stats must be finite with std > 0")
    return mean.to(x.device).view(1, -1, 1, 1), std.to(x.device).view(1, -1, 1, 1)


def feature_mean(features: torch.Tensor) -> torch.Tensor:
    """The default real-mean estimator of DM: the plain mean over the samples, ``(C, n, d) -> (C, d)``.

    With it, :func:`dm_loss` is eq. (2) of RDM-DC (papers/000) for one network draw.
    """
    return features.mean(dim=-2)


def per_class(estimator: Callable[[torch.Tensor], torch.Tensor]) -> Estimator:
    """Turn an unbatched estimator ``(n, d) -> (d,)`` into a batched one ``(C, n, d) -> (C, d)``.

    A loop over the C classes (never over samples); use it for estimators that cannot
    work on a leading class dimension (e.g. a spectral filter written for one class).
    """
    def batched(features: torch.Tensor) -> torch.Tensor:
        return torch.stack([estimator(f) for f in features.unbind(0)])

    batched.__name__ = f"per_class({getattr(estimator, '__name__', 'estimator')})"
    batched.key = lambda: {"per_class": callable_key(estimator)}
    return batched


def callable_key(fn) -> dict | str:
    """What a checkpoint key records of a pluggable callable (an estimator, a real-batch loss).

    An object with ``key()`` (the estimators of :mod:`poisonbook.estimators`, :func:`per_class`)
    gives its name and every parameter; a plain function its qualified name and a hash of its
    source and of the values it closes over, so two lambdas, or one function with two bound
    parameters, never share a checkpoint.
    """
    if callable(getattr(fn, "key", None)):
        return fn.key()
    import hashlib
    import inspect

    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        src = repr(fn)
    cells = [repr(c.cell_contents) for c in (getattr(fn, "__closure__", None) or ())]
    code = getattr(fn, "__code__", None)  # two lambdas on one source line differ in their code
    code = repr((code.co_code, code.co_consts, code.co_names)) if code is not None else ""
    digest = hashlib.sha256("\n".join([src, code, *cells, repr(getattr(fn, "__defaults__", None))]).encode())
    return {"name": getattr(fn, "__qualname__", type(fn).__name__), "source": digest.hexdigest()[:16]}


def estimate_real(estimator, features: torch.Tensor, generator: torch.Generator | None = None):
    """``(target (C, d), dropped (C, k) or None)``: the real-side estimate of one DM iteration.

    An estimator with ``estimate(features, generator)`` (:mod:`poisonbook.estimators`) draws its
    randomness from ``generator`` (the run's) and reports the rows it dropped; a plain function
    ``(C, n, d) -> (C, d)`` is called as before.
    """
    c, _, d = features.shape
    name = getattr(estimator, "__name__", repr(estimator))
    if callable(getattr(estimator, "estimate", None)):
        est = estimator.estimate(features, generator)
        return _check_estimate(est.mean, c, d, name), est.dropped
    return _check_estimate(estimator(features), c, d, name), None


def _check_estimate(est: torch.Tensor, c: int, d: int, name: str) -> torch.Tensor:
    if not isinstance(est, torch.Tensor) or tuple(est.shape) != (c, d):
        raise ValueError(f"estimator {name} must map real features (C, n, d) = (.., .., {d}) to (C, d) = "
                         f"({c}, {d}), got {getattr(est, 'shape', type(est).__name__)}; wrap an "
                         f"(n, d) -> (d,) estimator with condense.per_class")
    if not torch.isfinite(est).all():
        raise ValueError(f"estimator {name} returned non-finite values")
    return est


def dm_loss(real_features: torch.Tensor, syn_features: torch.Tensor,
            estimator: Estimator = feature_mean, generator: torch.Generator | None = None) -> torch.Tensor:
    """DM matching loss for one network draw (Zhao & Bilen 2021b; RDM-DC eq. (2), Algorithm 3).

    ``sum_c || estimator(real_features[c]) - mean_j syn_features[c, j] ||_2^2`` with
    ``real_features`` of shape (C, n, d) and ``syn_features`` of shape (C, m, d). The synthetic
    side is always the plain mean (eq. (2)); only the real side's estimator is pluggable
    (Algorithm 3's ``Calibrate``). The loss is a *sum* over classes, as in the reference.

    The estimator contract: a function of a tensor (C, n, d) returning (C, d), the estimate of
    each class's mean embedding computed independently per class; it is called on detached
    features (no gradient flows through it), so it need not be differentiable. ``generator``
    feeds a randomised estimator (:func:`estimate_real`).
    """
    checks.finite(real_features, "real_features", where="dm_loss")
    checks.finite(syn_features, "syn_features", where="dm_loss")
    if real_features.ndim != 3 or syn_features.ndim != 3:
        raise ValueError(f"dm_loss expects real (C, n, d) and synthetic (C, m, d) features, got "
                         f"{tuple(real_features.shape)} and {tuple(syn_features.shape)}")
    c, _, d = real_features.shape
    if syn_features.shape[0] != c or syn_features.shape[2] != d:
        raise ValueError(f"real features {tuple(real_features.shape)} and synthetic features "
                         f"{tuple(syn_features.shape)} disagree on classes or dimension")
    target, _ = estimate_real(estimator, real_features.detach(), generator)
    return _match(target, syn_features)


def _match(target: torch.Tensor, syn_features: torch.Tensor) -> torch.Tensor:
    return ((target - syn_features.mean(dim=1)) ** 2).sum()


def match_distance(g_syn: Sequence[torch.Tensor], g_real: Sequence[torch.Tensor],
                   eps: float = 1e-6) -> torch.Tensor:
    """DC's layer-wise gradient matching distance D (Zhao et al. 2021, the distance of Algorithm 1's loss).

    For every parameter gradient with at least 2 dimensions, reshape to (output channels, -1)
    and sum over output channels ``1 - <a_i, b_i> / (||a_i|| ||b_i|| + eps)``; 1-D parameters
    (biases, normalisation weights) are skipped; the result is the sum over layers. ``eps`` =
    1e-6 as in the reference; with ``eps=0`` identical non-zero gradients give exactly 0 (up to
    rounding).
    """
    g_syn, g_real = list(g_syn), list(g_real)
    if len(g_syn) != len(g_real):
        raise ValueError(f"match_distance: {len(g_syn)} synthetic but {len(g_real)} real gradients")
    checks.number(eps, "eps", low=0.0, where="match_distance")
    total = None
    for i, (a, b) in enumerate(zip(g_syn, g_real)):
        checks.finite(a, f"synthetic gradient {i}", where="match_distance")
        checks.finite(b, f"real gradient {i}", where="match_distance")
        if a.shape != b.shape:
            raise ValueError(f"match_distance: gradient {i} has shapes {tuple(a.shape)} (synthetic) and "
                             f"{tuple(b.shape)} (real)")
        if a.ndim < 2:
            continue
        a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        cos = (a2 * b2).sum(-1) / (a2.norm(dim=-1) * b2.norm(dim=-1) + eps)
        term = (1 - cos).sum()
        total = term if total is None else total + term
    if total is None:
        device = g_syn[0].device if g_syn else None
        return torch.zeros((), device=device)
    return total


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default real-batch loss of DC/DSA: ``cross_entropy(model(x), y)`` (GUARD replaces it)."""
    return F.cross_entropy(model(x), y)


GUARD_FORMS = ("paper", "code")


class CurvatureLoss:
    """GUARD's real-batch loss ``L_R = l + lambda * mean_i R_i`` (papers/002, eq. (8) and (10)).

    ``form="paper"`` (eq. 8): ``z = h g / ||g||`` with ``g = grad_x l(x)`` and
    ``R = ||grad_x l(x + z) - grad_x l(x)||_2^2``. ``form="code"`` (the authors' DC fork,
    ``main_CURE.py``): ``z = h sign(g) / ||sign(g)||`` (the sign rescaled to l2 norm ``h``),
    ``R = ||grad_x l(x + z) - grad_x l(x)||_2`` (not squared), computed with the model in eval mode.
    Defaults as in the fork: ``lam`` = 100, ``h`` = 0.6 in [0, 1] pixel units. The direction ``z``
    is a constant (detached, as in CURE, Moosavi-Dezfooli et al. 2019); both input gradients keep
    their graph (``create_graph=True``) so that DC's parameter gradient of ``L_R`` sees the curvature.

    Called as ``real_loss(model, x, y)`` by :func:`dc` on *standardised* images
    ``u = (x_pixel - mean) / std``: pixel gradients are ``grad_u / std`` and a pixel step ``z`` is
    ``z / std`` in ``u``; pass the standardisation's ``std`` (None: the images are pixels). The
    per-sample input gradients of a whole class batch come from one backward pass of the *summed*
    loss, exact when each sample's output depends on its own input only (the ConvNet's instance
    norm; not batch norm in training mode). ``loss(logits, y, reduction=...)``: the per-sample loss
    ``l``, default cross-entropy. With ``lam == 0`` it is exactly ``loss(model(x), y)`` (no R is
    computed). Its ``__name__`` carries every parameter, so it enters :func:`dc`'s checkpoint key.
    """

    def __init__(self, lam: float = 100.0, h: float = 0.6, form: str = "paper", std=None,
                 loss: Callable = F.cross_entropy):
        where = "CurvatureLoss"
        self.lam = checks.number(lam, "lam (lambda)", low=0.0, where=where)
        self.h = checks.number(h, "h", low=0.0, low_open=True, where=where)
        self.form = checks.choice(form, "form", GUARD_FORMS, where=where)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32).flatten()
        if self.std is not None:
            checks.finite(self.std, "std", where=where)
            if not bool((self.std > 0).all()):
                raise checks.BadInput(f"{where}: std must be > 0, got {self.std.tolist()}")
        self.loss = loss

    @property
    def __name__(self) -> str:
        std = "none" if self.std is None else ",".join(f"{float(s):.6g}" for s in self.std)
        return (f"guard(form={self.form},lambda={self.lam!r},h={self.h!r},std=[{std}],"
                f"loss={getattr(self.loss, '__name__', repr(self.loss))})")

    def __repr__(self) -> str:
        return self.__name__

    def key(self) -> dict:
        """Every parameter, for :func:`callable_key` (the checkpoint key of :func:`dc`)."""
        return dict(name="guard", form=self.form, lam=self.lam, h=self.h,
                    std=None if self.std is None else [float(s) for s in self.std],
                    loss=callable_key(self.loss) if self.loss is not F.cross_entropy else "cross_entropy")

    def _input_grad(self, model: nn.Module, u: torch.Tensor, y: torch.Tensor, scale) -> torch.Tensor:
        (g,) = torch.autograd.grad(self.loss(model(u), y, reduction="sum"), u, create_graph=True)
        return g / scale

    def regulariser(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample ``R_i`` (shape (n,)) of the batch ``x`` (standardised), differentiable in the parameters."""
        scale = 1.0 if self.std is None else self.std.to(x.device).view(1, -1, *[1] * (x.ndim - 2))
        was_training = model.training
        if self.form == "code":
            model.eval()
        try:
            u = x.detach().requires_grad_(True)
            g0 = self._input_grad(model, u, y, scale)
            d = g0.detach() if self.form == "paper" else g0.detach().sign()
            norm = d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.ndim - 1))
            z = self.h * d / norm  # a step of l2 length h in pixel units
            u1 = (x.detach() + z / scale).requires_grad_(True)
            g1 = self._input_grad(model, u1, y, scale)
        finally:
            model.train(was_training)
        diff = (g1 - g0).flatten(1).norm(dim=1)
        return diff**2 if self.form == "paper" else diff

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        base = self.loss(model(x), y, reduction="mean")
        if self.lam == 0:
            return base
        return base + self.lam * self.regulariser(model, x, y).mean()


# --------------------------------------------------------------------------- results


@dataclass
class Condensed:
    """A synthetic set and how it was made.

    ``x`` (C*ipc, channels, H, W) in the caller's coordinates (not clipped), ``y`` the class-major
    labels; ``loss`` the matching loss per iteration; ``seconds`` the time spent in the loop
    (over all resumed parts); ``iterations`` done; ``stats`` the (mean, std) used to standardise.
    """

    x: torch.Tensor
    y: torch.Tensor
    method: str
    ipc: int
    loss: list[float]
    seconds: float
    iterations: int
    stats: tuple[torch.Tensor, torch.Tensor]
    config: dict = field(default_factory=dict)

    @property
    def seconds_per_iteration(self) -> float:
        return self.seconds / max(self.iterations, 1)


@dataclass
class Evaluation:
    """Test accuracies of ``len(accuracies)`` networks trained on one synthetic set.

    ``predictions`` (models, n_probe): each network's predicted label for every probe sample
    (Part II's attack success), or None; ``models`` the trained networks (taking inputs in the
    caller's coordinates) when asked for. ``std`` is the population standard deviation
    (``np.std``, as the reference code reports it).
    """

    accuracies: list[float]
    seconds: float
    predictions: torch.Tensor | None = None
    models: list[nn.Module] | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracies))


# --------------------------------------------------------------------------- shared machinery


def _classes(y: torch.Tensor, num_classes, where: str) -> int:
    """``num_classes`` (validated) or one more than the largest label."""
    if num_classes is None:
        return int(y.max()) + 1
    return checks.integer(num_classes, "num_classes", low=1, where=where)


def _labelled(x, y, num_classes, where, name="x"):
    """Images (any range: they may be standardised) and their labels, checked; returns (x, y, classes)."""
    x = checks.images(x, name, domain=None, where=where)
    y = checks.labels(y, f"labels of {name}", n=len(x), where=where)
    classes = _classes(y, num_classes, where)
    return x, checks.labels(y, f"labels of {name}", num_classes=classes, where=where), classes


def _setup(x, y, ipc, init, num_classes, batch_real, stats, where):
    """Validate the real data; return (classes, sampler, mean, std, batch_real)."""
    x, y, classes = _labelled(x, y, num_classes, where)
    ipc = checks.integer(ipc, "ipc (images per class)", low=1, where=where)
    if init not in INITS:
        raise checks.BadInput(f"{where}: unknown init {init!r}; choose one of {', '.join(INITS)} ('noise': "
                              f"Gaussian noise N(0, I) in standardised coordinates; 'real': random real images)")
    sampler = ClassSampler(y, classes)  # raises for a class without images
    smallest = min(len(i) for i in sampler.by_class)
    if init == "real" and smallest < ipc:
        raise ValueError(f"{where}: init='real' needs {ipc} images of every class but one class has "
                         f"{smallest}")
    batch_real = min(checks.integer(batch_real, "batch_real", low=1, where=where), smallest)
    mean, std = _standardizer(x, stats)
    return classes, sampler, mean, std, batch_real, ipc


def _seed_from(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=gen))


def _fresh_net(factory: Callable[[], nn.Module], seed: int, device) -> nn.Module:
    """A network from ``factory`` whose initialisation depends only on ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = factory()
    if not isinstance(net, nn.Module):
        raise ValueError(f"net factory must return an nn.Module, got {type(net).__name__}")
    return net.to(device)


def _default_factory(shape, classes, width, depth=3):
    checks.integer(width, "width", low=1, where="ConvNet")
    checks.integer(depth, "depth", low=1, where="ConvNet")
    c, h, w = shape
    if h != w:
        raise ValueError(f"the ConvNet expects square images, got {h}x{w}")
    return lambda: models.ConvNet(in_channels=c, num_classes=classes, im_size=h, width=width, depth=depth)


def _init_images(xs_std, sampler, ipc, classes, init, gen, shape, device):
    if init == "noise":
        return torch.randn(classes * ipc, *shape, generator=gen).to(device)
    idx = sampler.indices(ipc, gen)
    return xs_std(idx)


def _start(x, mean, std, sampler, ipc, classes, init, seed, lr, momentum, ckpt):
    """Shared start of DM and DC: the run's generator, the initial synthetic images (standardised,
    requiring grad) with their SGD optimiser, and the loss history; all restored from ``ckpt`` when
    it holds a saved state. Returns ``(real_std, gen, syn, opt, history, seconds, start_iteration)``
    where ``real_std(idx)`` gives standardised real images."""
    device = x.device

    def real_std(idx):
        return (x[idx.to(device)] - mean) / std

    gen = torch.Generator().manual_seed(seed)
    syn = _init_images(real_std, sampler, ipc, classes, init, gen, tuple(x.shape[1:]), device)
    syn = syn.detach().clone().requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=lr, momentum=momentum)
    history, seconds, start = [], 0.0, 0
    if ckpt is not None and (state := ckpt.load()) is not None:
        with torch.no_grad():
            syn.copy_(state["images"].to(device))
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        history, seconds, start = state["loss"], state["seconds"], state["iteration"]
    return real_std, gen, syn, opt, history, seconds, start


def _save(ckpt, syn, opt, gen, history, seconds, iteration) -> None:
    """The state :func:`_start` restores."""
    ckpt.save({"images": syn.detach().cpu(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
               "loss": history, "seconds": seconds, "iteration": iteration})


def _end_iteration(ckpt, it, iterations, syn, opt, gen, history, seconds, callback) -> None:
    """Checkpoint when due, then report the iteration to ``callback``."""
    if ckpt is not None and ckpt.due(it, iterations - 1):
        _save(ckpt, syn, opt, gen, history, seconds, it + 1)
    if callback is not None:
        callback(it, syn.detach(), history[-1])


def _finish(syn, y_syn, method, ipc, history, seconds, mean, std, config) -> "Condensed":
    """The result in pixel coordinates (the loops run standardised)."""
    out = (syn.detach() * std + mean).clone()
    return Condensed(out, y_syn.clone(), method, ipc, history, seconds, len(history),
                     (mean.flatten().cpu(), std.flatten().cpu()), config)


def _fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    """The exact data part of a checkpoint key (SHA-256 of the images' and labels' bytes)."""
    return fingerprint(x, y)


def _make_checkpoint(checkpoint, config, every):
    if checkpoint is None or isinstance(checkpoint, Checkpoint):
        return checkpoint
    return Checkpoint(checkpoint, config, every=every)


def _finite(loss: torch.Tensor, it: int, method: str) -> float:
    return checks.finite_loss(loss, it, method, "lower the image learning rate")


def _progress(it_range, progress: bool, total: int, desc: str):
    if not progress:
        return it_range
    from tqdm.auto import tqdm

    return tqdm(it_range, initial=it_range.start, total=total, desc=desc, leave=False)


# --------------------------------------------------------------------------- DM


def dm(x: torch.Tensor, y: torch.Tensor, ipc: int, *, iterations: int = 20_000, lr: float = 1.0,
       momentum: float = 0.5, batch_real: int = 256, init: str = "real",
       strategy: str | None = aug.STRATEGY, estimator: Estimator = feature_mean,
       net: Callable[[], nn.Module] | None = None, width: int = 128, depth: int = 3,
       num_classes: int | None = None, stats: tuple | None = None, seed: int = 0,
       checkpoint: Checkpoint | str | os.PathLike | None = None, checkpoint_every: int = 100,
       callback: Callable[[int, torch.Tensor, float], None] | None = None,
       on_estimate: Callable | None = None, progress: bool = False) -> Condensed:
    """Distribution matching (Zhao & Bilen 2021b, "Dataset Condensation with Distribution Matching").

    Each iteration samples a fresh, frozen network ``Phi_theta`` (``theta ~ P_theta``: the
    default PyTorch initialisation of ``net()``), draws ``batch_real`` real images of every class
    and one DSA transform ``A_{w_c}`` per class (``augment.draw(..., per_group_op=True)``: each
    class its own op and parameters, as the reference's class loop), applies ``A_{w_c}`` to the
    real and the synthetic images of class c, and takes one SGD step on the synthetic images
    along the gradient of

        ``sum_c || estimator(Phi(A_{w_c}(real_c))) - mean_j Phi(A_{w_c}(s_j^c)) ||^2``

    (RDM-DC eq. (2) per class; RDM-DC Algorithm 3 with ``Calibrate = estimator``; see
    :func:`dm_loss`). Because the network is frozen and its instance norm is per sample, all
    classes' real images go through one forward pass (no gradient) and all synthetic images
    through another; the per-class means are taken after reshaping to (C, n, d).

    Defaults (paper / reference): ``iterations`` 20,000; SGD on the images with ``lr`` 1.0 and
    ``momentum`` 0.5; ``batch_real`` 256 per class (capped at the smallest class size);
    ``init`` "real" (reference; RDM-DC uses "noise", Gaussian N(0, I) in standardised
    coordinates); ``strategy`` the full DSA strategy (pass ``augment.strategy_for(name)``,
    or None for no augmentation); ConvNet ``width`` 128, depth 3 (``net`` overrides: a
    zero-argument factory of a module with ``embed()``).

    ``estimator``: real-mean estimator, a function ``(C, n, d) -> (C, d)`` applied to the
    detached real features of all classes at once (see :func:`dm_loss`, :func:`per_class`);
    default the plain mean. ``checkpoint``: a path or :class:`~poisonbook.cache.Checkpoint`;
    images, optimiser state, iteration, loss history and generator state are saved every
    ``checkpoint_every`` iterations and a later call resumes from there (bit-identical to an
    uninterrupted run on the same device). ``callback(iteration, images, loss)`` after each
    iteration (images in standardised coordinates; raise to stop).
    ``on_estimate(iteration, idx, features, estimate, dropped)`` each iteration before the step:
    ``idx`` (C, n) the indices into ``x`` of the real batch, ``features`` (C, n, d) their detached
    embeddings, ``estimate`` (C, d), ``dropped`` (C, k) positions into the n axis (or None); with
    the caller's poison flags ``is_poison[idx]`` it gives the poisoned deviation of every
    iteration (:func:`poisonbook.estimators.deviation_parts`). The estimator's name and every
    parameter enter the checkpoint key (:func:`callable_key`); a randomised estimator
    (``estimators.calibrated_mean``) draws from the run's generator, so resume is bit-identical.
    RDM-DC (Algorithm 3) is ``dm(..., estimator=estimators.calibrated_mean(eps), init="noise")``.
    ``stats``: the per-channel (mean, std) that standardise the images (default: those of ``x``; see
    the module docstring).
    """
    where = "condense.dm"
    x = checks.images(x, "x", domain=None, where=where)  # float64 -> float32, the networks' dtype
    classes, sampler, mean, std, batch_real, ipc = _setup(x, y, ipc, init, num_classes, batch_real, stats,
                                                          where)
    iterations = checks.integer(iterations, "iterations", where=where)
    lr = checks.number(lr, "lr", low=0.0, low_open=True, where=where)
    momentum = checks.fraction(momentum, "momentum", where=where)
    aug.parse_strategy(strategy or "none")
    device = x.device
    factory = net or _default_factory(tuple(x.shape[1:]), classes, width, depth)
    if callable(getattr(estimator, "check_n", None)):
        estimator.check_n(batch_real)  # e.g. floor(3 eps n) >= n: fail before the loop, not inside it
    config = dict(method="dm", ipc=ipc, iterations=iterations, lr=lr, momentum=momentum,
                  batch_real=batch_real, init=init, strategy=strategy or "none",
                  estimator=callable_key(estimator),
                  width=width if net is None else "custom", depth=depth if net is None else "custom",
                  classes=classes, seed=seed, data=_fingerprint(x, y))
    ckpt = _make_checkpoint(checkpoint, config, checkpoint_every)

    real_std, gen, syn, opt, history, seconds, start = _start(x, mean, std, sampler, ipc, classes, init, seed,
                                                              lr, momentum, ckpt)
    y_real = torch.arange(classes, device=device).repeat_interleave(batch_real)
    y_syn = torch.arange(classes, device=device).repeat_interleave(ipc)

    for it in _progress(range(start, iterations), progress, iterations, "DM"):
        t0 = time.perf_counter()
        network = _fresh_net(factory, _seed_from(gen), device)
        if not hasattr(network, "embed"):
            raise ValueError("DM needs a network with an embed() method (features to match)")
        network.train()
        network.requires_grad_(False)
        idx = sampler.indices(batch_real, gen)
        xr = real_std(idx)
        xs = syn
        if strategy:
            d = aug.draw(strategy, classes, generator=gen, device=device, per_group_op=True)
            xr = aug.apply(xr, d, y_real)
            xs = aug.apply(xs, d, y_syn)
        with torch.no_grad():
            fr = network.embed(xr)
        fs = network.embed(xs)
        fr = fr.view(classes, batch_real, -1)
        target, dropped = estimate_real(estimator, fr, gen)
        if on_estimate is not None:
            on_estimate(it, idx.view(classes, batch_real), fr, target, dropped)
        loss = _match(target, fs.view(classes, ipc, -1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(_finite(loss, it, "DM"))
        seconds += time.perf_counter() - t0
        _end_iteration(ckpt, it, iterations, syn, opt, gen, history, seconds, callback)
    return _finish(syn, y_syn, "dm", ipc, history, seconds, mean, std, config)


# --------------------------------------------------------------------------- DC / DSA


def dc(x: torch.Tensor, y: torch.Tensor, ipc: int, *, iterations: int = 1_000, lr_img: float = 0.1,
       momentum: float = 0.5, lr_net: float = 0.01, batch_real: int = 256, batch_train: int = 256,
       loops: tuple[int, int] | None = None, init: str = "real", strategy: str | None = None,
       real_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy_loss,
       net: Callable[[], nn.Module] | None = None, width: int = 128, depth: int = 3,
       num_classes: int | None = None, stats: tuple | None = None, seed: int = 0,
       checkpoint: Checkpoint | str | os.PathLike | None = None, checkpoint_every: int = 10,
       callback: Callable[[int, torch.Tensor, float], None] | None = None,
       progress: bool = False, method: str = "dc") -> Condensed:
    """Gradient matching (Zhao, Mopuri & Bilen 2021, "Dataset Condensation with Gradient Matching", Alg. 1).

    For each of ``iterations`` network initialisations (the paper's outer loop, K = 1,000):
    repeat ``outer_loop`` times (the paper's T): for every class c draw ``batch_real`` real
    images, compute the parameter gradient of ``real_loss(net, real_c, c)`` and of the
    cross-entropy on the synthetic images of class c (with ``create_graph``), add their
    :func:`match_distance` (the paper's layer-wise distance D: per layer and output channel
    ``1 - cos``, 1-D parameters skipped), and take one SGD step on the synthetic images (``lr_img`` 0.1,
    ``momentum`` 0.5) with the sum over classes; then, except after the last of these, train
    the network for ``inner_loop`` epochs on the synthetic set (plain SGD, ``lr_net`` 0.01,
    batches of ``batch_train`` 256; with DSA, each batch augmented non-Siamese).
    ``loops = (outer_loop, inner_loop)`` defaults to :data:`DC_LOOPS` (1 -> (1, 1), 10 -> (10, 50),
    50 -> (50, 10)); other ``ipc`` need explicit loops.

    The per-class gradients are computed in a loop over the classes (a parameter gradient per
    class needs a backward pass per class; ``torch.func.vmap`` over classes is exact too but
    several times slower on CPU), never over samples.

    ``strategy``: None for DC; a DSA strategy makes it DSA (:func:`dsa`): one transform per
    class (``per_group_op=True``) applied to the real and the synthetic batch of the class.
    ``real_loss(model, x, y) -> scalar``: the loss whose parameter gradient on the real batch
    is matched (GUARD adds its curvature term here); default cross-entropy. ``init`` "real"
    (reference) or "noise". ``checkpoint``, ``callback`` and ``stats`` as in :func:`dm`, per
    network initialisation. The recorded loss of an iteration is the mean over its ``outer_loop``
    image updates of the class-summed distance.
    """
    where = f"condense.{method}"
    x = checks.images(x, "x", domain=None, where=where)  # float64 -> float32, the networks' dtype
    classes, sampler, mean, std, batch_real, ipc = _setup(x, y, ipc, init, num_classes, batch_real, stats,
                                                          where)
    iterations = checks.integer(iterations, "iterations", where=where)
    lr_img = checks.number(lr_img, "lr_img", low=0.0, low_open=True, where=where)
    lr_net = checks.number(lr_net, "lr_net", low=0.0, low_open=True, where=where)
    batch_train = checks.integer(batch_train, "batch_train", low=1, where=where)
    momentum = checks.fraction(momentum, "momentum", where=where)
    if loops is None:
        if ipc not in DC_LOOPS:
            raise ValueError(f"{where}: no reference (outer_loop, inner_loop) for ipc={ipc} (known: "
                             f"{DC_LOOPS}); pass loops=(outer, inner)")
        loops = DC_LOOPS[ipc]
    if len(loops) != 2:
        raise ValueError(f"loops must be (outer_loop, inner_loop), got {loops!r}")
    outer_loop = checks.integer(loops[0], "outer_loop", low=1, where=where)
    inner_loop = checks.integer(loops[1], "inner_loop", where=where)
    aug.parse_strategy(strategy or "none")
    device = x.device
    factory = net or _default_factory(tuple(x.shape[1:]), classes, width, depth)
    config = dict(method=method, ipc=ipc, iterations=iterations, lr_img=lr_img, momentum=momentum,
                  lr_net=lr_net, batch_real=batch_real, batch_train=batch_train,
                  loops=[outer_loop, inner_loop], init=init,
                  strategy=strategy or "none", real_loss=callable_key(real_loss),
                  width=width if net is None else "custom", depth=depth if net is None else "custom",
                  classes=classes, seed=seed, data=_fingerprint(x, y))
    ckpt = _make_checkpoint(checkpoint, config, checkpoint_every)

    real_std, gen, syn, opt_img, history, seconds, start = _start(x, mean, std, sampler, ipc, classes, init,
                                                                  seed, lr_img, momentum, ckpt)
    y_syn = torch.arange(classes, device=device).repeat_interleave(ipc)

    for it in _progress(range(start, iterations), progress, iterations, method.upper()):
        t0 = time.perf_counter()
        network = _fresh_net(factory, _seed_from(gen), device)
        network.train()
        matched = [p for p in network.parameters() if p.ndim >= 2]  # 1-D gradients are skipped anyway
        opt_net = torch.optim.SGD(network.parameters(), lr=lr_net)
        total = 0.0
        for ol in range(outer_loop):
            idx = sampler.indices(batch_real, gen).view(classes, batch_real)
            d = (aug.draw(strategy, classes, generator=gen, device=device, per_group_op=True)
                 if strategy else None)
            loss = None
            for c in range(classes):
                xr, xs = real_std(idx[c]), syn[c * ipc:(c + 1) * ipc]
                if d is not None:
                    xr, xs = aug.apply(xr, d, c), aug.apply(xs, d, c)
                yr = torch.full((len(xr),), c, device=device, dtype=torch.long)
                g_real = torch.autograd.grad(real_loss(network, xr, yr), matched)
                g_real = [g.detach() for g in g_real]
                syn_loss = F.cross_entropy(network(xs), y_syn[c * ipc:(c + 1) * ipc])
                g_syn = torch.autograd.grad(syn_loss, matched, create_graph=True)
                term = match_distance(g_syn, g_real)
                loss = term if loss is None else loss + term
            opt_img.zero_grad(set_to_none=True)
            loss.backward()
            opt_img.step()
            total += _finite(loss, it, method.upper())
            if ol == outer_loop - 1:
                break
            xs_train = syn.detach().clone()
            for _ in range(inner_loop):
                order = torch.randperm(len(xs_train), generator=gen).to(device)
                for i in range(0, len(order), batch_train):
                    b = order[i:i + batch_train]
                    xb = xs_train[b]
                    if strategy:
                        xb = aug.augment(xb, strategy, gen)
                    step_loss = F.cross_entropy(network(xb), y_syn[b])
                    opt_net.zero_grad(set_to_none=True)
                    step_loss.backward()
                    opt_net.step()
        history.append(total / outer_loop)
        seconds += time.perf_counter() - t0
        _end_iteration(ckpt, it, iterations, syn, opt_img, gen, history, seconds, callback)
    return _finish(syn, y_syn, method, ipc, history, seconds, mean, std, config)


def dsa(x: torch.Tensor, y: torch.Tensor, ipc: int, *, strategy: str = aug.STRATEGY, **kwargs) -> Condensed:
    """DSA (Zhao & Bilen 2021a, "Dataset Condensation with Differentiable Siamese Augmentation").

    :func:`dc` with Siamese augmentation: the same random transform ``A_{w_c}`` on the real and
    the synthetic batch of class c in every matching step, and random (non-Siamese) DSA
    augmentation of the network's training batches. ``strategy`` default
    ``"color_crop_cutout_flip_scale_rotate"``; use ``augment.strategy_for(dataset)`` (no flip for
    digits). All other arguments and defaults are :func:`dc`'s (1,000 iterations, image lr 0.1,
    momentum 0.5, network lr 0.01, 256 real images per class).
    """
    if not strategy or not aug.parse_strategy(strategy):
        raise ValueError("dsa needs an augmentation strategy; use dc() for no augmentation")
    return dc(x, y, ipc, strategy=strategy, method="dsa", **kwargs)


def guard(x: torch.Tensor, y: torch.Tensor, ipc: int, *, lam: float = 100.0, h: float = 0.6, form: str = "paper",
          stats: tuple | None = None, **kwargs) -> Condensed:
    """GUARD (papers/002, eq. (10), appendix C): :func:`dc` (or DSA with ``strategy``) matching the
    parameter gradient of the curvature-regularised real loss :class:`CurvatureLoss` (eq. (8);
    ``lam`` = 100, ``h`` = 0.6 in pixel units, ``form`` "paper" or "code") instead of the plain
    cross-entropy; the synthetic side is unchanged. All other arguments and defaults are
    :func:`dc`'s (the paper's DC loops, 1,000 iterations, image lr 0.1, network lr 0.01, 256 real
    images per class). ``lam=0`` gives :func:`dc`'s synthetic set bit for bit.
    """
    x = checks.images(x, "x", domain=None, where="condense.guard")
    if stats is None:
        stats = channel_stats(x)
    real_loss = CurvatureLoss(lam, h, form, std=stats[1])
    return dc(x, y, ipc, real_loss=real_loss, stats=stats, method="guard", **kwargs)


# --------------------------------------------------------------------------- baselines and evaluation


def random_subset(x: torch.Tensor, y: torch.Tensor, ipc: int, *, seed: int = 0,
                  num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` random real images of every class, class-major (the papers' "Random" coreset baseline)."""
    where = "condense.random_subset"
    x, y, classes = _labelled(x, y, num_classes, where)
    ipc = checks.integer(ipc, "ipc (images per class)", low=1, where=where)
    idx = ClassSampler(y, classes).indices(ipc, torch.Generator().manual_seed(seed)).to(x.device)
    return x[idx].clone(), y.to(x.device)[idx].clone()


def evaluate_synthetic(x_syn: torch.Tensor, y_syn: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                       *,
                       num_models: int = 20, epochs: int = 300, strategy: str | None = None, lr: float = 0.01,
                       momentum: float = 0.9, weight_decay: float = 5e-4, batch_size: int = 256,
                       net: Callable[[], nn.Module] | None = None, width: int = 128, depth: int = 3,
                       num_classes: int | None = None, stats: tuple | None = None, seed: int = 0,
                       probe: torch.Tensor | None = None, keep_models: bool = False,
                       progress: bool = False) -> Evaluation:
    """Train ``num_models`` fresh networks on a synthetic set and test them (the DC/DSA/DM protocol).

    Each network (default: ConvNet, ``width`` 128, depth 3; seeded by ``seed + i``) is trained
    with :func:`poisonbook.train.fit`: SGD ``lr`` 0.01, ``momentum`` 0.9, ``weight_decay`` 5e-4,
    lr x0.1 at half the ``epochs``, ``batch_size`` 256. The papers use 300 epochs without
    augmentation for DC and 1,000 epochs with DSA augmentation (``strategy``, applied
    non-Siamese to every batch) for DSA and DM; DC and DSA train 20 models per synthetic set.
    Images are standardised with ``stats`` (per-channel mean, std; default: of ``x_syn``
    itself, so pass the real training set's, e.g. ``Condensed.stats``) before training,
    testing and probing.

    ``probe``: images whose predicted labels are returned for every model
    (``Evaluation.predictions``, shape (num_models, len(probe))), e.g. Part II's targeted
    sample. ``keep_models``: return the networks, wrapped with :class:`Standardize` so they take
    inputs in the caller's coordinates. Accuracy std is the population std over the models.
    """
    where = "evaluate_synthetic"
    x_syn = checks.images(x_syn, "x_syn", domain=None, where=where)
    x_test = checks.images(x_test, "x_test", domain=None, where=where)
    y_syn = checks.labels(y_syn, "y_syn", n=len(x_syn), where=where)
    y_test = checks.labels(y_test, "y_test", n=len(x_test), where=where)
    classes = (_classes(y_syn, num_classes, where) if num_classes is not None
               else int(max(y_syn.max(), y_test.max())) + 1)
    checks.labels(y_syn, "y_syn", num_classes=classes, where=where)
    checks.labels(y_test, "y_test", num_classes=classes, where=where)
    if x_syn.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"synthetic images {tuple(x_syn.shape[1:])} and test images "
                         f"{tuple(x_test.shape[1:])} differ in shape")
    if probe is not None:
        probe = checks.images(probe, "probe", domain=None, where=where)
        if probe.shape[1:] != x_syn.shape[1:]:
            raise ValueError(f"probe images {tuple(probe.shape[1:])} differ in shape from "
                             f"{tuple(x_syn.shape[1:])}")
    num_models = checks.integer(num_models, "num_models", low=1, where=where)
    epochs = checks.integer(epochs, "epochs", where=where)
    aug.parse_strategy(strategy or "none")
    mean, std = _standardizer(x_syn, stats)
    device = x_syn.device
    xs = (x_syn - mean) / std
    xt = (x_test.to(device) - mean) / std
    xp = (probe.to(device) - mean) / std if probe is not None else None
    factory = net or _default_factory(tuple(x_syn.shape[1:]), classes, width, depth)
    augment_fn = (lambda xb, g: aug.augment(xb, strategy, g)) if strategy else None
    accs, preds, kept = [], [], []
    t0 = time.perf_counter()
    for i in range(num_models):
        model = _fresh_net(factory, seed + i, device)
        fit(model, xs, y_syn, epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
            batch_size=batch_size, schedule="step", milestones=(0.5,), augment=augment_fn, seed=seed + i,
            progress=progress)
        accs.append((predict(model, xt) == y_test.to(device)).float().mean().item())
        if xp is not None:
            preds.append(predict(model, xp))
        if keep_models:
            kept.append(nn.Sequential(Standardize(mean.flatten(), std.flatten()), model).to(device).eval())
    return Evaluation(accs, time.perf_counter() - t0, torch.stack(preds) if preds else None,
                      kept if keep_models else None)
