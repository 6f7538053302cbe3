"""Chapter 31, "Against the authors' code": Gradient Canceling as the released code (watml/plim, ``GC/*.py``) runs it.

The paper (Lu, Kamath & Yu 2023, Section 5.1, eq. 33 and Appendix C.1) minimises
``1/2 ||g(mu) + eps_d g(nu)||^2`` over the FULL parameter gradient, with mean-reduced losses, SGD with momentum, a
cosine schedule, lr 0.5 and poisons that start as a random ``eps_d n`` sample. The released scripts
(``GC/mnist_lr-0.03.py``, ``GC/mnist_nn-0.03-5e-1.py``, ``GC/mnist_cnn-0.03.py``) differ:

* objective ``||sum_clean grad + sum_poison grad||^2``: cross-entropy with ``reduction="sum"``, no ``1/2``, and only
  the gradient of the FIRST parameter tensor (``grad_c[0]``, ``grad_p[0]``: ``fc1.weight`` of LR and NN,
  ``conv1.weight`` of the CNN);
* plain gradient descent ``x <- x - lr * dL/dx`` (no momentum), lr 10 (LR, NN) or 5 (CNN), cosine schedule per
  epoch, 1,000 (LR) or 2,000 (NN, CNN) epochs, and a stop as soon as the loss is below 1;
* poisons start from the FIRST ``int(eps_d n)`` training images with their labels (no randomness);
* inputs normalised by MNIST's mean/std (0.1307, 0.3081) and never clipped; the CNN has dropout, active during GC
  (the model is never put in eval mode).

Issue 12 (the reviewer's reading of the same scripts) adds: for the CNN the first layer holds about 1.4% of
``||g||^2``, and optimising it alone took the full gradient from 8.43 to 7.96 where the full objective reached 6.36
(300 images, 20 epochs); ``tests/test_gc_code.py`` checks the weaker statement that holds on 8x8 digits.

Read also: one stored version of ``GC/mnist_lr-0.03.py`` takes ``torch.norm(grad_sum, 2)`` without the square
(the other version and the NN and CNN scripts square it; this module follows the square), and the NN script's
model is ``LinearModel`` (784-128-10, ReLU), not the ``MLP`` class. :func:`code_variant` reproduces the list above
except the dropout (the book's ``SmallCNN`` has none) and ``int`` against ``round`` for the number of poisons
(equal whenever ``eps_d n`` is an integer). :func:`compare` runs it next to the book's GC (the paper's variant) with
each option switched back to the paper's one at a time.
"""

from __future__ import annotations

import copy
import time
from typing import Callable, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from .. import checks, poison, theory, train
from ..profiles import Config
from . import gc_networks

__all__ = ["MNIST_NORM", "VARIANTS", "CodeResult", "code_variant", "first_only", "normalised_model", "code_random_pc",
           "pc_rows", "compare"]

LOSS = F.cross_entropy
MNIST_NORM = (0.1307, 0.3081)  # transforms.Normalize((0.1307,), (0.3081,)) of the authors' scripts

# The rows of the comparison: the book's GC (the paper's variant), the authors' code, and the code with ONE option
# switched back to the paper's (name -> the keyword arguments of code_variant that change).
VARIANTS = {
    "code": {},
    "code_full": {"first_param_only": False},        # the paper's full gradient
    "code_meanlr": {"sum_reduction": False},         # the paper's objective scale: the book's lr on the mean loss
    "code_random": {"deterministic_start": False},   # the paper's random start
    "code_pixel": {"normalise": None},               # the book's pixel coordinates and parametrisation
    "code_momentum": {"momentum": "book"},           # the book's momentum (0.9)
}


class CodeResult(NamedTuple):
    """Output of :func:`code_variant`."""

    X_p: torch.Tensor      # (m, ...) poisons in PIXEL coordinates (mapped back when normalised)
    y_p: torch.Tensor      # (m,) their labels (the starting points')
    grad_norms: list       # ||g(chi)|| of the optimised tensor(s), in the parametrisation GC ran in, per epoch
    code_loss: list        # the code's loss ||n g(mu) + m g(nu)||^2 = ((n + m) ||g(chi)||)^2, same epochs
    lr: float              # the learning rate handed to poison.gradient_canceling
    stopped_at: int | None  # the epoch at which the code's stop rule (loss < stop_below) fired, or None


def _first_layer(model: nn.Module, where: str):
    """The module holding the model's first parameter tensor; it must be a bias-carrying Linear or unpadded Conv."""
    name, _ = next(iter(model.named_parameters()))
    owner, _, leaf = name.rpartition(".")
    mod = model.get_submodule(owner) if owner else model
    ok = isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and leaf == "weight" and mod.bias is not None
    if ok and isinstance(mod, nn.modules.conv._ConvNd):
        ok = all(p == 0 for p in mod.padding) if not isinstance(mod.padding, str) else mod.padding == "valid"
    if not ok:
        raise checks.BadInput(f"{where}: normalise needs the first parameter tensor ({name!r}) to be the weight of a "
                              f"Linear or an unpadded Conv layer with a bias, got {type(mod).__name__}; pass "
                              f"normalise=None")
    return mod


def normalised_model(model: nn.Module, mean: float, std: float) -> nn.Module:
    """A copy ``h`` of ``model`` that takes normalised inputs ``z = (x - mean) / std``: ``h(z) = model(x)``.

    The first layer absorbs the affine map: ``W' = std W`` and ``b' = b + mean * sum(W)`` (sum over all axes but
    the output one), exact for a Linear layer and for an unpadded convolution. This is the parametrisation of the
    authors' models, which are trained on normalised MNIST, so its first-tensor gradient is theirs:
    for LR ``g_W' = (g_W - g_b mean 1^T) / std``, not ``g_W``.
    """
    where = "normalised_model"
    std = checks.number(std, "std", low=0.0, low_open=True, where=where)
    mean = checks.number(mean, "mean", where=where)
    h = copy.deepcopy(model)
    layer = _first_layer(h, where)
    with torch.no_grad():
        layer.bias.add_(mean * layer.weight.sum(dim=tuple(range(1, layer.weight.dim()))))
        layer.weight.mul_(std)
    return h


def first_only(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which only the first parameter tensor requires grad (the code's ``grad[0]``)."""
    h = copy.deepcopy(model)
    for i, p in enumerate(h.parameters()):
        p.requires_grad_(i == 0)
    return h


def code_variant(model: nn.Module, X_clean, y_clean, eps_d, *, lr_code: float, epochs: int,
                 first_param_only: bool = True, sum_reduction: bool = True, deterministic_start: bool = True,
                 normalise: tuple[float, float] | None = MNIST_NORM, momentum: float = 0.0,
                 stop_below: float | None = 1.0, lr_mean: float | None = None, loss_fn: Callable = LOSS,
                 seed: int = 0, callback: Callable | None = None) -> CodeResult:
    """Gradient Canceling as the authors' code runs it, by a call to :func:`poison.gradient_canceling`.

    The learning-rate conversion. Let ``n`` clean points, ``m = round(eps_d n)`` poisons, ``g(.)`` the MEAN
    gradient of the (first-tensor) parameters and ``eps = m / n``. The code minimises, with sum-reduced
    cross-entropy and no ``1/2``,

        L_code = ||sum_i grad l(z_i) + sum_j grad l(x_j)||^2 = ||n g(mu) + m g(nu)||^2
               = n^2 ||g(mu) + eps g(nu)||^2 = 2 n^2 * (1/2 ||g(mu) + eps g(nu)||^2) = 2 n^2 L_ours,

    and ``poison.gradient_canceling`` minimises ``L_ours`` (eq. 33). Hence ``dL_code/dx_j = 2 n^2 dL_ours/dx_j``
    and one gradient-descent step of size ``lr_code`` on ``L_code`` is exactly one step of size
    ``lr = 2 n^2 lr_code`` on ``L_ours``. Both use the same per-epoch cosine factor
    ``0.5 (1 + cos(pi t / epochs))`` (the code's ``adjust_learning_rate``), so with ``momentum=0``, full-batch
    steps and no clipping the whole trajectory is the code's. By eq. (34) a poison then moves by
    ``2 n lr_code J^T r`` (``r`` the mean-gradient residual): the code's step GROWS with ``n``, where the book's
    ``lr / n J^T r`` shrinks.

    Normalisation. The code works on ``z = (x - 0.1307) / 0.3081`` with models trained on ``z``. GD in ``z``
    equals GD in pixels with the step multiplied by ``std^2`` (``x = mean + std z``, so ``dL/dz = std dL/dx`` and
    ``x <- x - lr std^2 dL/dx``; not ``1/std^2``) -- but only for the SAME function of ``x``; the first-tensor
    gradient also depends on the parametrisation (for LR ``g_W' = (g_W - g_b mean 1^T)/std``). So with
    ``normalise=(mean, std)`` this runs GC in ``z`` on :func:`normalised_model` (the same function as ``model``,
    in the code's parametrisation) and maps the poisons back to pixels; ``normalise=None`` runs in pixels on
    ``model`` itself. Poisons are never clipped (the code's ``max_value``/``min_value`` are never used).

    Each option can be switched back to the paper's alone:

    * ``first_param_only``: only the first parameter tensor (code, via :func:`first_only`) or the full gradient;
    * ``sum_reduction``: the code's step ``lr = 2 n^2 lr_code``, or the paper's objective scale, ``lr = lr_mean``
      on the mean-reduced ``L_ours`` (the chapter passes the book's lr, ``_Setting.gc_lr``);
    * ``deterministic_start``: the first ``m`` clean points with their labels, or ``gradient_canceling``'s
      random sample drawn with ``seed``;
    * ``normalise``: the code's normalised coordinates, or the book's pixels (``None``);
    * ``momentum``: 0 (code), or the book's heavy ball (``torch.optim.SGD``'s rule, as ``gradient_canceling``);
    * ``stop_below``: the code's ``if loss < 1: break``: the epoch whose starting ``L_code`` is below it takes no
      step and the run ends there (reproduced exactly: the poisons of the previous epoch are returned);
      ``None`` never stops.

    Not reproduced: the CNN's dropout (the book's ``SmallCNN`` has none) and float64 (the book's models are
    float32; the caller may pass float64 models and data).

    Args:
        model: the target (pixel inputs), never modified.
        X_clean, y_clean: the clean training set (pixels), checked by ``gradient_canceling``.
        eps_d: poisoning ratio (> 0).
        lr_code: the code's learning rate on ``L_code`` (10 for LR and NN, 5 for the CNN).
        epochs: GC epochs (the code: 1,000 for LR, 2,000 for NN and CNN).
        callback: ``callback(epoch, X_p, grad_norm)`` as in ``gradient_canceling`` (``X_p`` in the coordinates GC
            runs in); returning ``True`` stops.

    Returns:
        :class:`CodeResult`. Raises ``FloatingPointError`` (from ``gradient_canceling``) when the run overflows.
    """
    where = "code_variant"
    if not isinstance(model, nn.Module):
        raise checks.BadInput(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}")
    X_clean = checks.features(X_clean, "clean features", where=where)
    eps = theory.check_eps_d(eps_d)
    lr_code = checks.number(lr_code, "lr_code", low=0.0, low_open=True, where=where)
    epochs = checks.integer(epochs, "epochs", where=where)
    momentum = checks.fraction(momentum, "momentum", where=where)
    seed = checks.integer(seed, "seed", low=None, where=where)
    if stop_below is not None:
        stop_below = checks.number(stop_below, "stop_below", low=0.0, where=where)
    if not sum_reduction:
        if lr_mean is None:
            raise checks.BadInput(f"{where}: sum_reduction=False needs lr_mean, the learning rate on the mean loss")
        lr_mean = checks.number(lr_mean, "lr_mean", low=0.0, low_open=True, where=where)
    n = len(X_clean)
    m = round(eps * n)
    if m < 1:
        raise checks.BadInput(f"{where}: eps_d * n = {eps * n:.3g} rounds to 0 poisons; increase eps_d (n = {n})")
    if deterministic_start and m > n:
        raise checks.BadInput(f"{where}: deterministic_start takes the first m = {m} of n = {n} clean points; "
                              f"use eps_d <= 1 or deterministic_start=False")

    net, X = model, X_clean
    if normalise is not None:
        if not isinstance(normalise, (tuple, list)) or len(normalise) != 2:
            raise checks.BadInput(f"{where}: normalise must be None or a pair (mean, std), got {normalise!r}")
        mean, std = normalise
        net = normalised_model(model, mean, std)
        X = (X_clean - mean) / std
        with torch.no_grad():  # the reparametrisation must leave the function unchanged
            k = min(n, 64)
            a, b = net(X[:k]), model(X_clean[:k])
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-4 * (1 + float(b.abs().max()))):
            raise checks.BadInput(f"{where}: the model's first parameter tensor is not its input layer "
                                  f"(normalised copy differs by {float((a - b).abs().max()):.3g}); pass normalise=None")
    if first_param_only:
        net = first_only(net)
    lr = 2 * n * n * lr_code if sum_reduction else lr_mean
    init = (X[:m], y_clean[:m]) if deterministic_start else None

    prev, stopped = [None], [None]
    if init is not None:
        prev[0] = init[0].detach().clone()

    def watch(epoch, X_p, grad_norm):  # grad_norm: ||g(chi)|| at the START of `epoch` (before its step)
        if stop_below is not None and ((n + m) * grad_norm) ** 2 < stop_below:
            stopped[0] = epoch
            return True
        prev[0] = X_p
        return bool(callback is not None and callback(epoch, X_p, grad_norm))

    res = poison.gradient_canceling(net, loss_fn, X, y_clean, eps, epochs=epochs, lr=lr, momentum=momentum,
                                    optimizer="sgd", clip=None, batch_size=None, seed=seed, init=init, callback=watch)
    X_p, norms = res.X_p, list(res.grad_norms)
    if stopped[0] is not None:  # the code took no step in that epoch: return the poisons it started from
        t = stopped[0]
        if prev[0] is None:  # random start and stop at epoch 0: the start is gradient_canceling's own draw
            prev[0] = poison.gradient_canceling(net, loss_fn, X, y_clean, eps, epochs=0, seed=seed).X_p
        X_p, norms = prev[0], norms[:t + 1]
    if normalise is not None:
        X_p = X_p * normalise[1] + normalise[0]
    return CodeResult(X_p.detach(), res.y_p, norms, [((n + m) * g) ** 2 for g in norms], float(lr), stopped[0])


# ---------------------------------------------------------------------------------------------------------------
# The comparison of chapter 31
# ---------------------------------------------------------------------------------------------------------------


def _norms(target, frozen, st, X_p, y_p) -> tuple[float, float]:
    """``||g(chi)||`` of the pixel target on clean + poisons: the full gradient and the first tensor only."""
    full = poison.mixed_gradient_norm(target, LOSS, st.X, st.y, X_p, y_p)
    first = poison.mixed_gradient_norm(frozen, LOSS, st.X, st.y, X_p, y_p)
    return full, first


def _evaluate(st, target, frozen, X_p, y_p, a0: float, X_start) -> dict:
    """Accuracy change of the retrained victim, final gradient norms, and how far the poisons went."""
    full, first = _norms(target, frozen, st, X_p, y_p)
    row = {"full_norm": full, "first_norm": first, "poison_min": float(X_p.min()), "poison_max": float(X_p.max()),
           "moved": float((X_p - X_start).flatten(1).norm(dim=1).mean()), "victim_diverged": False}
    try:
        row["delta"] = st.acc(st.retrained(X_p, y_p)) - a0
    except FloatingPointError:  # the victim's SGD overflows on the poisons
        row["delta"], row["victim_diverged"] = None, True
    return row


def _run_variant(st, target, frozen, e: float, opts: dict, cfg: Config, a0: float) -> dict:
    """One row: the code variant with ``opts``, backing ``lr_code`` off by ``lr_backoff`` while it overflows."""
    s = st.s
    lr0 = float(cfg["lr_code"][s["model"]])
    epochs = s["gc_epochs"] if cfg["epochs"] is None else int(cfg["epochs"][s["model"]])
    kw = {"first_param_only": True, "sum_reduction": True, "deterministic_start": True,
          "normalise": tuple(cfg["normalise"]), "momentum": 0.0, **opts}
    if kw["momentum"] == "book":
        kw["momentum"] = st.cfg.gc_momentum
    tries = cfg["backoff_tries"] if kw["sum_reduction"] else 1
    diverged, t0 = [], time.perf_counter()
    for k in range(tries):
        lr_code, seen = lr0 * cfg["lr_backoff"] ** k, [0]
        try:
            res = code_variant(target, st.X, st.y, e, lr_code=lr_code, epochs=epochs, lr_mean=st.gc_lr,
                               stop_below=cfg["stop_below"], seed=st.seed,
                               callback=lambda t, x, g: seen.__setitem__(0, t + 1), **kw)
        except FloatingPointError:
            diverged.append([lr_code, seen[0]])  # overflowed during epoch seen[0]
            continue
        seconds = time.perf_counter() - t0
        m = len(res.X_p)
        X_start = st.X[:m] if kw["deterministic_start"] else res.X_p  # random start: only the distance is lost
        row = _evaluate(st, target, frozen, res.X_p, res.y_p, a0, X_start)
        if not kw["deterministic_start"]:
            row["moved"] = None
        return {**row, "lr_code": lr_code if kw["sum_reduction"] else None, "lr": res.lr, "epochs": epochs,
                "stopped_at": res.stopped_at, "code_loss_start": res.code_loss[0], "code_loss_end": res.code_loss[-1],
                "diverged": diverged, "seconds": seconds}
    return {"delta": None, "full_norm": None, "first_norm": None, "lr_code": None, "lr": None, "epochs": epochs,
            "stopped_at": None, "diverged": diverged, "seconds": time.perf_counter() - t0, "victim_diverged": False}


def _book_row(st, target, frozen, e: float, a0: float) -> dict:
    """The book's GC (the paper's variant, ``gc_networks``' seed-0 run): ``st.gc``."""
    t0 = time.perf_counter()
    res = st.gc(target, e, st.seed)
    seconds = time.perf_counter() - t0
    row = _evaluate(st, target, frozen, res.X_p, res.y_p, a0, res.X_p)
    row["moved"] = None
    return {**row, "lr_code": None, "lr": st.gc_lr, "epochs": st.s["gc_epochs"], "stopped_at": None,
            "diverged": [], "seconds": seconds}


def code_random_pc(model: nn.Module, eps: float, seed: int = 0) -> nn.Module:
    """The authors' RandomPC: ``w + eps N(0, I)``, an absolute ``eps`` per coordinate (norm about ``eps sqrt(P)``)."""
    net, gen = copy.deepcopy(model), torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(eps * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p))
    return net


def pc_rows(st, clean, eps_list, a0: float) -> dict:
    """Parameter corruption with the authors' ABSOLUTE budget ``eps`` (models ``*_5e-1``), next to the book's.

    Per ``eps``: GradPC at radius ``eps`` (the book's ``grad_pc`` at relative budget ``eps / ||w||``; the authors'
    ``GradAttacker`` (attack lr 1) is not in the stored code, so its step rule is the book's), the authors' RandomPC
    (:func:`code_random_pc`) and the book's RandomPC at GradPC's radius; test-accuracy changes in points.
    """
    w_norm = float(torch.cat([p.detach().reshape(-1) for p in clean.parameters()]).double().norm())
    n_params = sum(p.numel() for p in clean.parameters())
    rows = {}
    for e in eps_list:
        rel = e / w_norm
        code = code_random_pc(clean, e, seed=st.seed)
        rows[gc_networks.eps_key(e)] = {
            "eps_rel": rel, "gradpc_delta": st.acc(st.gradpc(clean, rel)) - a0,
            "randompc_code_delta": st.acc(code) - a0, "randompc_code_norm": e * n_params ** 0.5,
            "randompc_book_delta": st.acc(poison.random_pc(clean, rel, seed=st.seed).model) - a0}
    return rows


def _metric_name(setting: str, variant: str, key: str, e) -> str:
    return f"{setting}:{variant}_{key}@eps_d={gc_networks.eps_key(e)}"


def compare(cfg: Config) -> dict:
    """The book's GC next to the authors' code and its one-option-back variants; the run record.

    ``cfg`` is ``profiles.get("gc-code", profile)``: ``settings`` (names of ``gc-networks`` settings), resolved
    into ``cfg["gcn"]`` (the ``gc-networks`` configuration of ``gcn_profile`` with only those settings),
    ``eps_d_list``, ``lr_code`` per model family, ``epochs`` (``None``: the setting's ``gc_epochs``, as the
    book's GC), ``normalise``, ``stop_below``, and ``lr_backoff``/``backoff_tries``: a run that overflows is
    repeated with ``lr_code`` times ``lr_backoff`` (up to ``backoff_tries`` learning rates), and the row records
    every overflow (``diverged``: ``[lr_code, epoch]``).

    Per setting the data, the clean victim and the GradPC target are ``gc_networks``' own (``_load``,
    ``_Setting.victim``, ``choose_target``); at each ``eps_d`` the rows are ``book`` (``_Setting.gc``, seed 0),
    ``control`` (the victim on clean + the first ``m`` clean points, the code's unmoved start) and
    :data:`VARIANTS`. Each row: ``delta`` (test accuracy of the victim retrained on clean + poisons minus the
    clean victim's, points), ``full_norm`` and ``first_norm`` (``||g(chi)||`` of the pixel target, full gradient
    and first tensor only), the poisons' pixel range, ``seconds`` (GC wall time, overflowing tries included).
    ``pc``: :func:`pc_rows` at every absolute budget of ``pc_eps_abs``.
    """
    device = train.choose_device()
    gcn = Config(cfg["gcn"])
    out = {"rows": {}, "pc": {}, "clean_acc": {}, "target": {}, "n": {}, "seconds": {}}
    metrics = {}
    for name in cfg["settings"]:
        t0 = time.perf_counter()
        st = gc_networks._load(gc_networks.setting_config(gcn, name), device)
        clean = st.victim(st.X, st.y)
        a0 = st.acc(clean)
        _, best, gradpc_models = gc_networks.choose_target(st, clean)
        target = gradpc_models[best["eps_w"]]
        frozen = first_only(target)
        out["clean_acc"][name], out["n"][name] = a0, st.n
        out["target"][name] = {k: best[k] for k in ("eps_w", "tau2", "tauc", "gradpc_acc")}
        out["target"][name]["first_tensor"] = next(iter(target.named_parameters()))[0]
        rows = {}
        for e in cfg["eps_d_list"]:
            m = round(e * st.n)
            r = {"book": _book_row(st, target, frozen, e, a0),
                 "control": _evaluate(st, target, frozen, st.X[:m], st.y[:m], a0, st.X[:m])}
            for variant, opts in VARIANTS.items():
                r[variant] = _run_variant(st, target, frozen, e, opts, cfg, a0)
            rows[gc_networks.eps_key(e)] = r
            for variant, row in r.items():
                for key in ("delta", "full_norm", "first_norm", "seconds", "lr_code"):
                    if key in row:
                        metrics[_metric_name(name, variant, key, e)] = row[key]
                if "diverged" in row:
                    metrics[_metric_name(name, variant, "overflows", e)] = len(row["diverged"])
        out["rows"][name] = rows
        out["pc"][name] = pc_rows(st, clean, cfg["pc_eps_abs"], a0)
        for e, row in out["pc"][name].items():
            for key in ("gradpc_delta", "randompc_code_delta", "randompc_book_delta"):
                metrics[f"{name}:pc_{key}@eps_w={e}"] = row[key]
        metrics[f"{name}:clean_acc"], metrics[f"{name}:target_delta"] = a0, best["gradpc_acc"] - a0
        out["seconds"][name] = time.perf_counter() - t0
    specs = {s["name"]: s for s in gcn["settings"]}
    out["scale"] = "; ".join(
        f"{name}: {out['n'][name]} {specs[name]['dataset']} training images, model {specs[name]['model']}, "
        f"victim {specs[name]['epochs']} epochs, book GC {specs[name]['gc_epochs']} epochs ("
        f"{gc_networks.lr_text(specs[name])}), code GC lr_code {float(cfg['lr_code'][specs[name]['model']]):g}"
        for name in cfg["settings"]) + f"; eps_d {', '.join(f'{e:g}' for e in cfg['eps_d_list'])}; {device.type}"
    return {"metrics": metrics, **out, "device": device.type}
