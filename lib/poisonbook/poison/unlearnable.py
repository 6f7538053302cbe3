"""Unlearnable examples: EM, REM, TAP, LSP, AR and OPS, batched, for any image size and channel count.

Every attack takes clean images ``x`` (N, C, H, W) in [0, 1] with labels ``y`` and returns the
perturbation ``delta`` (same shape) with the norm it claims; the unlearnable images are
:func:`apply_perturbation` ``(x, delta) = clip(x + delta, 0, 1)``. For the l_inf and l_0 attacks
(EM, REM, TAP, OPS) ``x + delta`` already lies in [0, 1], so clipping changes nothing; for the l_2
attacks (LSP, AR) ``||delta||_2`` equals the budget exactly and clipping can only shrink it, as in
the reference code. Budgets and step counts are those the D-VAE paper (Yu et al. 2024, section 4.1
and appendix E.1) uses, from the attacks' own papers:

* :func:`em` error-minimising noise (Huang et al. 2021, eq. 2 and the bi-level min-min loop),
  sample-wise or class-wise, l_inf 8/255.
* :func:`rem` robust error-minimising noise (Fu et al. 2022, eq. 4: min-min-max with an expectation
  over transformations), rho_u 8/255, rho_a 4/255.
* :func:`tap` targeted adversarial poisoning (Fowl et al. 2021): PGD towards (y+1) mod C against a
  model trained on clean data, l_inf 8/255, 250 steps.
* :func:`lsp` linearly separable perturbations (Yu et al. 2022, Algorithm 1), l_2 1.0 (paper) or
  (6/255) sqrt(HWC) (the authors' code; 1.30 on CIFAR-10).
* :func:`ar` autoregressive perturbations (Sandoval-Segura et al. 2022, Algorithm 1), l_2 1.0.
* :func:`ops` one-pixel shortcut (Wu et al. 2023, Algorithm 1), l_0 = 1 pixel.

NTGA (needs JAX neural tangents) and SEP (checkpoint ensembles at paper scale) are not implemented.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import augment as _augment
from .. import checks
from ..attacks import pgd

__all__ = ["ATTACK_NORMS", "apply_perturbation", "perturbation_norms", "lsp_code_norm", "em", "rem", "tap",
           "lsp", "ar", "ops", "ops_search", "ops_search_loop"]

ATTACK_NORMS = {"em": "linf", "em-classwise": "linf", "rem": "linf", "tap": "linf", "lsp": "l2", "ar": "l2",
                "ops": "l0"}


def _inputs(x, y, num_classes, where):
    x = checks.images(x, "x", where=where)
    num_classes = checks.integer(num_classes, "num_classes", low=2, where=where)
    y = checks.labels(y, "y", num_classes=num_classes, n=len(x), where=where)
    return x, y, num_classes


def apply_perturbation(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The unlearnable images ``clip(x + delta, 0, 1)``."""
    x = checks.images(x, "x", where="apply_perturbation")
    delta = checks.images(delta, "delta", domain=None, where="apply_perturbation")
    if delta.shape != x.shape:
        raise checks.BadInput(f"apply_perturbation: delta must have the shape of x {tuple(x.shape)}, "
                              f"got {tuple(delta.shape)}")
    return (x + delta).clamp(0, 1)


def perturbation_norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image norm of ``delta``: ``linf``, ``l2``, or ``l0`` (pixel positions changed in any channel)."""
    delta = checks.images(delta, "delta", domain=None, where="perturbation_norms")
    checks.choice(norm, "norm", ("linf", "l2", "l0"), where="perturbation_norms")
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1)
    if norm == "l2":
        return flat.norm(dim=1)
    return (delta != 0).any(1).flatten(1).sum(1)


def _clip_linf(delta, x, eps):
    """Project onto ||delta||_inf <= eps and x + delta in [0, 1]."""
    return (x + delta.clamp(-eps, eps)).clamp(0, 1) - x


def _sgd(model, lr):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def _train_steps(model, opt, x, y, steps, batch_size, gen, adversary=None):
    """``steps`` SGD steps on random batches of (x, y); ``adversary(xb, yb)`` replaces xb if given."""
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen).to(x.device)
        _sgd_step(model, opt, x[idx], y[idx], adversary)
    model.eval()


def _sgd_step(model, opt, xb, yb, adversary=None):
    """One training step on a batch; ``adversary(xb, yb)`` (run in eval mode) replaces it first if given."""
    if adversary is not None:
        model.eval()
        xb = adversary(xb, yb)
    model.train()
    loss = F.cross_entropy(model(xb), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


@torch.no_grad()
def _error(model, x, y, batch_size=1024):
    model.eval()
    wrong = sum(int((model(x[i:i + batch_size]).argmax(1) != y[i:i + batch_size]).sum())
                for i in range(0, len(x), batch_size))
    return wrong / len(x)


def _frozen(model):
    """Context: the model's parameters get no gradient while perturbations are optimised."""
    class _Ctx:
        def __enter__(self):
            self.flags = [p.requires_grad for p in model.parameters()]
            for p in model.parameters():
                p.requires_grad_(False)

        def __exit__(self, *exc):
            for p, f in zip(model.parameters(), self.flags):
                p.requires_grad_(f)
    return _Ctx()


def _budget_checks(eps, alpha, steps, where):
    eps = checks.epsilon(eps, "eps", allow_zero=False, where=where)
    alpha = checks.number(alpha, "alpha", low=0.0, low_open=True, where=where)
    steps = checks.integer(steps, "steps", low=1, where=where)
    return eps, alpha, steps


# --------------------------------------------------------------------------------------------- EM


def em(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, *, eps: float = 8 / 255,
       alpha: float = 0.8 / 255, steps: int = 20, train_steps: int = 10, classwise: bool = False,
       stop_error: float | None = None, max_passes: int = 10, lr: float = 0.1, batch_size: int = 128,
       seed: int = 0, history: list | None = None) -> torch.Tensor:
    """Error-minimising noise (Huang et al. 2021, eq. 2): ``min_theta min_delta sum_i l(x_i + delta_i, y_i)``.

    Huang et al.'s bi-level loop, per pass: ``train_steps`` (10) SGD steps of the surrogate ``model``
    (trained in place, lr 0.1, momentum 0.9, wd 5e-4) on the current unlearnable images, then
    ``steps`` (20) signed-gradient *descent* steps of size ``alpha`` (0.8/255) on the perturbation of
    every sample, projected onto ||delta||_inf <= eps (8/255) and x + delta in [0, 1]. Stops when the
    surrogate's error on the unlearnable set falls below ``stop_error`` (default 1% sample-wise, 10%
    class-wise, as in the paper) or after ``max_passes`` passes.

    ``classwise=True`` learns one noise per class (``delta_i = u_{y_i}``); each signed step uses the
    gradient of the batch loss w.r.t. the class noises, so ``x + u_y`` is clipped only when applied.
    ``history`` (a list), if given, receives the surrogate's error after each pass.
    """
    where = "em"
    x, y, num_classes = _inputs(x, y, num_classes, where)
    eps, alpha, steps = _budget_checks(eps, alpha, steps, where)
    checks.integer(train_steps, "train_steps", low=0, where=where)
    checks.integer(max_passes, "max_passes", low=1, where=where)
    if stop_error is None:
        stop_error = 0.1 if classwise else 0.01
    stop_error = checks.fraction(stop_error, "stop_error", where=where)
    gen = torch.Generator().manual_seed(seed)
    opt = _sgd(model, lr)
    shape = (num_classes, *x.shape[1:]) if classwise else x.shape
    u = torch.zeros(shape, device=x.device)
    for _ in range(max_passes):
        delta = u[y] if classwise else u
        _train_steps(model, opt, (x + delta).clamp(0, 1), y, train_steps, batch_size, gen)
        with _frozen(model):
            for i in range(0, len(x), batch_size):
                xb, yb = x[i:i + batch_size], y[i:i + batch_size]
                if classwise:
                    for _ in range(steps):
                        uc = u.clone().requires_grad_(True)
                        loss = F.cross_entropy(model((xb + uc[yb]).clamp(0, 1)), yb)
                        (g,) = torch.autograd.grad(loss, uc)
                        u = (u - alpha * g.sign()).clamp(-eps, eps)
                else:
                    u[i:i + batch_size] = _descend(model, xb, u[i:i + batch_size], yb, eps, alpha, steps)
        err = _error(model, (x + (u[y] if classwise else u)).clamp(0, 1), y)
        if history is not None:
            history.append(err)
        if err < stop_error:
            break
    return (u[y] if classwise else u).detach().clone()


def _descend(model, x, delta, y, eps, alpha, steps, transform=None, adversary=None, samples=1):
    """Signed descent of the loss of x + delta w.r.t. delta (the "min" over the noise), projected.

    ``transform(batch)`` and ``adversary(batch, y)`` add REM's expectation over transformations and
    its inner maximisation: the gradient is averaged over ``samples`` draws of ``transform``, each
    followed by an adversarial step that is held fixed (a constant offset) when differentiating.
    """
    for _ in range(steps):
        d = delta.clone().requires_grad_(True)
        g = torch.zeros_like(delta)
        for _ in range(samples):
            xt = (x + d).clamp(0, 1)
            if transform is not None:
                xt = transform(xt)
            if adversary is not None:
                xt = xt + (adversary(xt.detach(), y) - xt.detach())
            (gi,) = torch.autograd.grad(F.cross_entropy(model(xt), y), d)
            g += gi
        delta = _clip_linf(delta - alpha * g.sign(), x, eps)
    return delta.detach()


# --------------------------------------------------------------------------------------------- REM


def rem(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, *, eps: float = 8 / 255,
        alpha: float = 1.6 / 255, steps: int = 10, adv_eps: float = 4 / 255, adv_alpha: float = 0.8 / 255,
        adv_steps: int = 10, samples: int = 5, train_steps: int = 10, stop_error: float | None = None,
        max_passes: int = 10, lr: float = 0.1, batch_size: int = 128, augment: str = "crop_flip",
        seed: int = 0, history: list | None = None) -> torch.Tensor:
    """Robust error-minimising noise (Fu et al. 2022, eq. 4).

    The objective is ``min_theta min_delta E_T max_rho l(T(x + delta) + rho)``.

    Per pass: ``train_steps`` steps of PGD adversarial training of the surrogate (radius ``adv_eps``
    rho_a = 4/255, ``adv_steps`` 10 steps of ``adv_alpha`` 0.8/255, by :func:`poisonbook.attacks.pgd`)
    on the unlearnable images; then ``steps`` (10) signed descent steps of ``alpha`` (1.6/255) on the
    defensive noise (rho_u = ``eps`` 8/255), each using the gradient averaged over ``samples`` (5)
    random transformations T (``augment``: DSA ops, the paper's crop and flip) of the adversarial
    example found by PGD against T(x + delta). Stops as :func:`em` does (below ``stop_error``, by
    default 1%, on the unlearnable images without transformations or adversary) or after
    ``max_passes``.
    """
    where = "rem"
    x, y, num_classes = _inputs(x, y, num_classes, where)
    eps, alpha, steps = _budget_checks(eps, alpha, steps, where)
    adv_eps = checks.epsilon(adv_eps, "adv_eps", where=where)
    adv_alpha = checks.number(adv_alpha, "adv_alpha", low=0.0, where=where)
    adv_steps = checks.integer(adv_steps, "adv_steps", low=0, where=where)
    samples = checks.integer(samples, "samples", low=1, where=where)
    checks.integer(max_passes, "max_passes", low=1, where=where)
    stop_error = checks.fraction(0.01 if stop_error is None else stop_error, "stop_error", where=where)
    _augment.parse_strategy(augment)
    gen = torch.Generator().manual_seed(seed)

    def adversary(xb, yb):
        return pgd(model, xb, yb, eps=adv_eps, alpha=adv_alpha, steps=adv_steps, generator=gen)

    def transform(xb):
        return _augment.augment(xb, augment, gen)

    opt = _sgd(model, lr)
    delta = torch.zeros_like(x)
    for _ in range(max_passes):
        _train_steps(model, opt, x + delta, y, train_steps, batch_size, gen, adversary=adversary)
        with _frozen(model):
            for i in range(0, len(x), batch_size):
                sl = slice(i, i + batch_size)
                delta[sl] = _descend(model, x[sl], delta[sl], y[sl], eps, alpha, steps, transform, adversary,
                                     samples)
        err = _error(model, x + delta, y)
        if history is not None:
            history.append(err)
        if err < stop_error:
            break
    return delta


# --------------------------------------------------------------------------------------------- TAP


def tap(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, *, eps: float = 8 / 255,
        alpha: float = 2 / 255, steps: int = 250, restarts: int = 1, batch_size: int = 500,
        seed: int = 0) -> torch.Tensor:
    """Targeted adversarial poisoning (Fowl et al. 2021): PGD towards the label map (y + 1) mod C.

    ``model`` is a classifier trained on the clean data (not modified). Each image is moved by
    ``steps`` (250) signed steps of ``alpha`` inside ||delta||_inf <= eps (8/255) to *decrease* the
    loss of the target class (y + 1) mod C (:func:`poisonbook.attacks.pgd`, targeted, random start).
    ``restarts`` > 1 keeps, per image, the restart with the lowest target loss. The step size is
    not given in the D-VAE paper; 2/255 is this book's choice.
    """
    where = "tap"
    x, y, num_classes = _inputs(x, y, num_classes, where)
    eps, alpha, steps = _budget_checks(eps, alpha, steps, where)
    restarts = checks.integer(restarts, "restarts", low=1, where=where)
    gen = torch.Generator().manual_seed(seed)
    target = (y + 1) % num_classes
    model.eval()
    out = torch.empty_like(x)
    for i in range(0, len(x), batch_size):
        xb, tb = x[i:i + batch_size], target[i:i + batch_size]
        best, best_loss = None, None
        for _ in range(restarts):
            adv = pgd(model, xb, tb, eps=eps, alpha=alpha, steps=steps, targeted=True, generator=gen)
            with torch.no_grad():
                loss = F.cross_entropy(model(adv), tb, reduction="none")
            if best is None:
                best, best_loss = adv, loss
            else:
                better = loss < best_loss
                best = torch.where(better.view(-1, 1, 1, 1), adv, best)
                best_loss = torch.minimum(loss, best_loss)
        out[i:i + batch_size] = _clip_linf(best - xb, xb, eps)
    return out


# --------------------------------------------------------------------------------------------- LSP


def lsp_code_norm(shape: tuple[int, int, int]) -> float:
    """The l_2 budget of LSP's public code, (6/255) sqrt(C H W): 1.30 on 3x32x32, 0.66 on 1x28x28."""
    c, h, w = shape
    return 6 / 255 * math.sqrt(c * h * w)


def _unit_l2(noise: torch.Tensor, eps: float) -> torch.Tensor:
    flat = noise.flatten(1).norm(dim=1).clamp_min(1e-12)
    return noise * (eps / flat).view(-1, 1, 1, 1)


def lsp(y: torch.Tensor, num_classes: int, shape: tuple[int, int, int], *, eps: float = 1.0,
        patch_grid: int = 4, class_sep: float = 10.0, seed: int = 0) -> torch.Tensor:
    """Linearly separable perturbations (Yu et al. 2022, Algorithm 1); returns delta, ||delta_i||_2 = eps.

    ``sklearn.datasets.make_classification`` draws ``len(y)`` points in ``patch_grid**2 * C``
    dimensions from one Gaussian cluster per class (``class_sep`` 10, all features informative),
    which are linearly separable; each image gets a point of its own class, reshaped to a
    ``patch_grid`` x ``patch_grid`` grid of colour patches (patch size 8 on 32x32, 7 on 28x28),
    upsampled to the image and scaled to l_2 norm ``eps``. The paper quotes eps = 1.0; the authors'
    code uses :func:`lsp_code_norm` (1.30 on CIFAR-10).
    """
    from sklearn.datasets import make_classification

    where = "lsp"
    num_classes = checks.integer(num_classes, "num_classes", low=2, where=where)
    y = checks.labels(y, "y", num_classes=num_classes, where=where)
    eps = checks.number(eps, "eps", low=0.0, low_open=True, where=where)
    c, h, w = (checks.integer(s, "shape", low=1, where=where) for s in shape)
    patch_grid = checks.integer(patch_grid, "patch_grid", low=1, high=min(h, w), where=where)
    d = patch_grid * patch_grid * c
    counts = torch.bincount(y.cpu(), minlength=num_classes).numpy()
    total = max(int(counts.max()) * num_classes, 2 * num_classes)
    pts, lab = make_classification(n_samples=total, n_features=d, n_informative=d, n_redundant=0,
                                   n_repeated=0, n_classes=num_classes, n_clusters_per_class=1,
                                   class_sep=class_sep, flip_y=0.0, shuffle=True, random_state=seed)
    noise = np.empty((len(y), d), dtype=np.float32)
    yn = y.cpu().numpy()
    for k in range(num_classes):  # a loop over classes: each image takes its own point of its class's cluster
        mine = np.flatnonzero(yn == k)
        noise[mine] = pts[lab == k][: len(mine)]
    grid = torch.from_numpy(noise).view(-1, c, patch_grid, patch_grid)
    up = F.interpolate(grid, size=(h, w), mode="nearest")
    return _unit_l2(up, eps).to(y.device)


# --------------------------------------------------------------------------------------------- AR


def _ar_filters(num_classes: int, channels: int, window: int, gen: torch.Generator,
                max_l1: float = 3.0) -> torch.Tensor:
    """Per class and channel a window x window AR filter: last tap (the pixel itself) zero, taps summing to 1.

    As in the reference code, Gaussian taps are divided by their sum, so the matching filter (taps
    with -1 at the pixel) sums to 0 and annihilates the class's noise. Dividing by a sum near zero
    gives huge taps and an exploding process (the reference's non-finite CIFAR-100 class); filters
    whose l_1 norm exceeds ``max_l1`` are redrawn, which bounds the growth per step (computed in
    float64, that stays finite on any canvas up to a few hundred pixels a side).
    """
    a = torch.empty(num_classes, channels, window * window, dtype=torch.float64)
    bad = torch.ones(num_classes, channels, dtype=torch.bool)
    while bad.any():  # rejection sampling, vectorised over classes and channels
        draw = torch.randn(num_classes, channels, window * window, generator=gen, dtype=torch.float64)
        draw[..., -1] = 0.0
        draw = draw / draw.sum(-1, keepdim=True)
        ok = bad & (draw.abs().sum(-1) <= max_l1)
        a[ok] = draw[ok]
        bad &= ~ok
    return a


def ar(y: torch.Tensor, num_classes: int, shape: tuple[int, int, int], *, eps: float = 1.0, window: int = 3,
       pad: int = 4, innovation: bool = False, seed: int = 0) -> torch.Tensor:
    """Autoregressive perturbations (Sandoval-Segura et al. 2022, Algorithm 1); ||delta_i||_2 = eps.

    Each class has its own ``window`` x ``window`` (3x3) autoregressive filter per channel
    (:func:`_ar_filters`). Noise is generated on a canvas padded by ``pad`` pixels (36x36 for 32x32):
    the canvas starts as standard Gaussian noise and, in raster order, every pixel outside the first
    ``window - 1`` rows and columns becomes the filter's combination of the already generated pixels
    of its window (``innovation=True`` adds fresh Gaussian noise to each, the reference's
    ``gaussian_noise`` option, off by default). The canvas is cropped to the image (the first ``pad``
    rows and columns are dropped) and scaled to l_2 norm ``eps``. All images and channels are
    generated at once (the loop runs over pixel positions). A non-finite result raises.
    """
    where = "ar"
    num_classes = checks.integer(num_classes, "num_classes", low=2, where=where)
    y = checks.labels(y, "y", num_classes=num_classes, where=where)
    eps = checks.number(eps, "eps", low=0.0, low_open=True, where=where)
    c, h, w = (checks.integer(s, "shape", low=1, where=where) for s in shape)
    window = checks.integer(window, "window", low=2, where=where)
    pad = checks.integer(pad, "pad", low=window - 1, where=where)
    gen = torch.Generator().manual_seed(seed)
    filt = _ar_filters(num_classes, c, window, gen)[y.cpu()]  # (N, C, k*k)
    H, W, k = h + pad, w + pad, window
    canvas = torch.randn(len(y), c, H, W, generator=gen, dtype=torch.float64)
    fresh = torch.randn(len(y), c, H, W, generator=gen, dtype=torch.float64) if innovation else None
    for i in range(k - 1, H):
        for j in range(k - 1, W):
            patch = canvas[:, :, i - k + 1:i + 1, j - k + 1:j + 1].flatten(2)
            canvas[:, :, i, j] = (filt * patch).sum(-1) + (fresh[:, :, i, j] if innovation else 0.0)
    noise = canvas[:, :, pad:, pad:]
    noise = noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    if not torch.isfinite(noise).all():
        raise FloatingPointError("ar: the autoregressive process produced non-finite values")
    return (noise * eps).float().to(y.device)


# --------------------------------------------------------------------------------------------- OPS


def _corner_colours(channels: int, device) -> torch.Tensor:
    """The 2**C extreme colours (corners of the colour cube): 8 for RGB, black and white for grey."""
    bits = torch.arange(2 ** channels, device=device)
    return ((bits[:, None] >> torch.arange(channels, device=device)) & 1).float()  # (K, C)


def _ops_scores(xc: torch.Tensor, colours: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Score (positions, colours) = mean / std over the class's images of sum_c |x - colour|."""
    flat = xc.flatten(2).transpose(1, 2)  # (n, P, C)
    scores = []
    for p in range(0, flat.shape[1], chunk):
        diff = (flat[:, p:p + chunk, None, :] - colours[None, None]).abs().sum(-1)  # (n, p, K)
        scores.append(diff.mean(0) / diff.std(0).clamp_min(1e-12))
    return torch.cat(scores)  # (P, K)


def ops_search(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """OPS's search (Wu et al. 2023, Algorithm 1), vectorised over positions and colours.

    For class k, every pixel position and extreme colour is scored by mean/std (over the images of
    class k) of the change ``sum_c |x[c, pos] - colour[c]|`` that setting the pixel would make: a
    large, uniform change is the most distinctive shortcut. Classes are handled in order, and
    positions already taken by earlier classes are excluded. Returns ``positions`` (num_classes,)
    as flat indices ``row * W + col`` and ``colours`` (num_classes, C).
    """
    x, y, num_classes = _inputs(x, y, num_classes, "ops_search")
    colours = _corner_colours(x.shape[1], x.device)
    taken = torch.zeros(x.shape[2] * x.shape[3], dtype=torch.bool, device=x.device)
    pos, col = [], []
    for k in range(num_classes):
        xc = x[y == k]
        if len(xc) < 2:
            raise checks.BadInput(f"ops_search: class {k} needs at least 2 images, got {len(xc)}")
        s = _ops_scores(xc, colours).masked_fill(taken[:, None], -math.inf)
        best = int(s.flatten().argmax())
        p, c = divmod(best, len(colours))
        taken[p] = True
        pos.append(p)
        col.append(colours[c])
    return torch.tensor(pos, device=x.device), torch.stack(col)


def ops_search_loop(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's search, a Python loop over positions and colours per class (benchmark and test)."""
    colours = _corner_colours(x.shape[1], x.device)
    h, w = x.shape[2:]
    taken, pos, col = set(), [], []
    for k in range(num_classes):
        xc = x[y == k]
        best, arg = -math.inf, None
        for i in range(h):
            for j in range(w):
                if i * w + j in taken:
                    continue
                for ci, colour in enumerate(colours):
                    diff = (xc[:, :, i, j] - colour).abs().sum(1)
                    score = float(diff.mean() / diff.std().clamp_min(1e-12))
                    if score > best:
                        best, arg = score, (i * w + j, ci)
        taken.add(arg[0])
        pos.append(arg[0])
        col.append(colours[arg[1]])
    return torch.tensor(pos), torch.stack(col)


def ops(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-pixel shortcut (Wu et al. 2023): every image of class k gets pixel ``pos_k`` set to ``colour_k``.

    Positions and colours come from :func:`ops_search` on ``(x, y)``. The returned delta is
    ``colour_k - x`` at that one position (all channels) and zero elsewhere: l_0 = 1 pixel, and
    ``x + delta`` stays in [0, 1].
    """
    x, y, num_classes = _inputs(x, y, num_classes, "ops")
    pos, col = ops_search(x, y, num_classes)
    n, c, h, w = x.shape
    mask = F.one_hot(pos[y], h * w).view(n, 1, h, w).to(x.dtype)
    target = col[y].view(n, c, 1, 1)
    return mask * (target - x)
