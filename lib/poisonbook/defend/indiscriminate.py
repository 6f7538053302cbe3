"""Defenses against data poisoning.

Sections (each starts with a banner comment):

* Shared helpers: input checks, per-sample parameter gradients (``torch.func`` vmap + grad).
* Sanitisation defenses tested against Gradient Canceling in Lu, Kamath & Yu, "Exploring the
  Limits of (Model-Targeted) Indiscriminate Data Poisoning Attacks" (ICML 2023), Section 5.4
  and Appendix C.10: Sever (:func:`sever`, Diakonikolas et al. 2019), influence-based removal
  (:func:`influence_removal`, Koh & Liang 2017) and MaxUp (:func:`maxup_loss`,
  :func:`maxup_fit`, Gong et al. 2021).

Conventions (as in :mod:`poisonbook.poison`): every ``loss_fn(outputs, y)`` returns the MEAN
loss over the batch; per-sample losses are obtained by vmapping it over single samples; tensors
stay on the caller's device; models are used in their current mode and never modified, except
by the training function :func:`maxup_fit`, which trains the model it is given in place.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .. import checks

__all__ = ["per_sample_gradients", "per_sample_losses", "SeverResult", "sever_scores", "sever",
           "InfluenceResult", "influence_scores", "influence_removal", "maxup_loss", "maxup_fit"]


# =============================================================================
# Shared helpers
# =============================================================================


def _data(model: nn.Module, X, y, where: str):
    """Features, and labels checked against the model's outputs (:func:`poisonbook.checks.model_labels`)."""
    if not isinstance(model, nn.Module):
        raise checks.BadInput(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}")
    X = checks.features(X, "features", where=where)
    return X, checks.model_labels(model, X, y, "labels", where=where)


def _split_params(model: nn.Module, param_names):
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    if param_names is None:
        chosen = dict(named)
    else:
        names = [param_names] if isinstance(param_names, str) else list(param_names)
        unknown = [k for k in names if k not in named]
        if unknown or not names:
            raise ValueError(f"param_names {unknown or names} not among the model's trainable parameters "
                             f"{list(named)}")
        chosen = {k: named[k] for k in names}
    if not chosen:
        raise ValueError("the model has no parameters that require grad")
    fixed = {k: p for k, p in named.items() if k not in chosen}
    fixed.update({k: b.detach() for k, b in model.named_buffers()})
    return chosen, fixed


def _per_sample_loss_fn(model, loss_fn, fixed):
    def f(params, x, t):  # loss of ONE sample, as a 0-d tensor
        out = functional_call(model, {**fixed, **params}, (x.unsqueeze(0),))
        return loss_fn(out, t.unsqueeze(0))
    return f


def per_sample_gradients(model: nn.Module, loss_fn: Callable, X, y, *, param_names=None,
                         batch_size: int = 256) -> torch.Tensor:
    """Per-sample parameter gradients ``G`` (N, P), flattened, by ``torch.func.vmap(grad(...))``.

    Row ``i`` is ``grad_w loss_fn(model(x_i), y_i)``; ``param_names`` restricts ``w`` to some
    parameters (e.g. the last layer, as Koh & Liang 2017 do for Inception), in
    ``model.named_parameters()`` order. Processed in chunks of ``batch_size`` samples.
    """
    X, y = _data(model, X, y, "per_sample_gradients")
    checks.integer(batch_size, "batch_size", low=1, where="per_sample_gradients")
    if not callable(loss_fn):
        raise ValueError("loss_fn must be callable as loss_fn(outputs, y)")
    params, fixed = _split_params(model, param_names)
    g = vmap(grad(_per_sample_loss_fn(model, loss_fn, fixed)), in_dims=(None, 0, 0))
    rows = []
    for i in range(0, len(X), batch_size):
        gs = g(params, X[i:i + batch_size], y[i:i + batch_size])
        rows.append(torch.cat([gs[k].reshape(len(gs[k]), -1) for k in params], 1))
    return torch.cat(rows)


def per_sample_losses(model: nn.Module, loss_fn: Callable, outputs: torch.Tensor,
                      y: torch.Tensor) -> torch.Tensor:
    """``(N,)`` losses ``loss_fn(outputs[i:i+1], y[i:i+1])`` in one vmapped call (``model`` unused)."""
    return vmap(lambda o, t: loss_fn(o.unsqueeze(0), t.unsqueeze(0)))(outputs, y)


# =============================================================================
# Sever (Diakonikolas, Kamath, Kane, Li, Steinhardt & Stewart, ICML 2019)
# =============================================================================


class SeverResult(NamedTuple):
    """Output of :func:`sever`."""

    keep: torch.Tensor  # (N,) bool, True for the points that survive
    removed: torch.Tensor  # (k,) indices removed, round by round, highest score first within a round
    scores: torch.Tensor  # (N,) outlier scores of the last round (NaN for points removed earlier)


def sever_scores(model: nn.Module, loss_fn: Callable, X, y, *, squared: bool = False, param_names=None,
                 batch_size: int = 256) -> torch.Tensor:
    """Sever outlier scores: Diakonikolas et al. (2019), Algorithm 1/2; Lu et al. (2023) Section 5.4.

    ``G`` = per-sample gradients at ``model`` (:func:`per_sample_gradients`), centred by their
    mean; ``v`` = top right singular vector of the centred ``G``; score ``|<g_i - mean, v>|``
    (``squared=True``: its square, Sever's ``tau_i``; same ranking). The singular vector comes
    from an eigendecomposition (float64) of the smaller of ``G G^T`` (N x N) and ``G^T G``
    (P x P), so ``G`` must fit in memory: restrict ``param_names`` for big networks.
    """
    G = per_sample_gradients(model, loss_fn, X, y, param_names=param_names, batch_size=batch_size).double()
    Gc = G - G.mean(0, keepdim=True)
    N, P = Gc.shape
    if N <= P:
        evals, evecs = torch.linalg.eigh(Gc @ Gc.T)
        proj = evecs[:, -1] * evals[-1].clamp(min=0).sqrt()  # G_c v = sigma u
    else:
        evals, evecs = torch.linalg.eigh(Gc.T @ Gc)
        proj = Gc @ evecs[:, -1]
    s = proj.pow(2) if squared else proj.abs()
    return s.to(X.dtype)


def sever(model: nn.Module, loss_fn: Callable, X, y, remove_frac, *, iterations: int = 1,
          refit: Callable | None = None, squared: bool = False, param_names=None,
          batch_size: int = 256) -> SeverResult:
    """Sever defense: remove the ``remove_frac`` share of ``(X, y)`` with the largest outlier scores.

    Lu, Kamath & Yu (2023), Section 5.4 / Appendix C.10: Sever "removes eps_d training points
    with the highest outlier scores, defined using the top singular value in the matrix of
    gradients"; so the default is ONE round (``iterations=1``) at the given ``model`` (the
    victim trained on the poisoned data). ``remove_frac`` is a fraction of the points passed in
    (the paper's "eps_d training points" is ambiguous between eps_d of the mixed set and
    eps_d * n clean-set sizes: pass ``eps_d * n / (n + m)`` for the latter).
    Diakonikolas et al.'s Sever alternates fitting and filtering: with ``iterations = r > 1``
    each round removes ``remove_frac / r`` of the ORIGINAL points (scores recomputed on the
    survivors) and ``refit(X_keep, y_keep) -> nn.Module`` retrains the model between rounds
    (required then). Scores: :func:`sever_scores` (absolute projection by default; ``squared``
    gives Sever's ``tau_i``, with the same ranking).
    """
    X, y = _data(model, X, y, "sever")
    frac = checks.fraction(remove_frac, "remove_frac", where="sever")
    checks.integer(iterations, "iterations", low=1, where="sever")
    if iterations > 1 and not callable(refit):
        raise ValueError("iterations > 1 needs refit(X_keep, y_keep) -> nn.Module to retrain between rounds")
    N = len(X)
    keep = torch.ones(N, dtype=torch.bool, device=X.device)
    removed = []
    scores = torch.full((N,), float("nan"), dtype=X.dtype, device=X.device)
    net = model
    for r in range(iterations):
        if r > 0:
            net = refit(X[keep], y[keep])
        idx = keep.nonzero().squeeze(1)
        s = sever_scores(net, loss_fn, X[idx], y[idx], squared=squared, param_names=param_names,
                         batch_size=batch_size)
        scores = torch.full((N,), float("nan"), dtype=X.dtype, device=X.device)
        scores[idx] = s
        k = round(frac * N * (r + 1) / iterations) - sum(len(t) for t in removed)
        k = max(0, min(k, len(idx) - 1))
        top = idx[torch.argsort(s, descending=True, stable=True)[:k]]
        keep[top] = False
        removed.append(top)
    return SeverResult(keep, torch.cat(removed), scores)


# =============================================================================
# Influence-based removal (Koh & Liang, ICML 2017)
# =============================================================================


class InfluenceResult(NamedTuple):
    """Output of :func:`influence_removal`."""

    keep: torch.Tensor  # (N,) bool
    removed: torch.Tensor  # (k,) indices removed, highest score first
    scores: torch.Tensor  # (N,) influence scores (see influence_scores)


def _hessian(model, loss_fn, params, fixed, X, y, batch_size):
    """Exact Hessian (P x P) of the mean loss over ``(X, y)`` w.r.t. the flattened ``params``."""
    names = list(params)
    shapes = [params[k].shape for k in names]
    sizes = [params[k].numel() for k in names]
    flat0 = torch.cat([params[k].reshape(-1) for k in names])

    def unflat(v):
        return {k: t.reshape(s) for k, t, s in zip(names, torch.split(v, sizes), shapes)}

    n = len(X)

    def mean_loss(v):
        def part(i):
            out = functional_call(model, {**fixed, **unflat(v)}, (X[i:i + batch_size],))
            return loss_fn(out, y[i:i + batch_size]) * (len(X[i:i + batch_size]) / n)

        return sum(part(i) for i in range(0, n, batch_size))

    return torch.autograd.functional.hessian(mean_loss, flat0, vectorize=True)


def influence_scores(model: nn.Module, loss_fn: Callable, X, y, *, X_ref=None, y_ref=None,
                     damping: float = 0.01, param_names=None, batch_size: int = 256) -> torch.Tensor:
    """Influence-function scores of every training point (Koh & Liang 2017, eqs. 2-3).

    ``I_up,loss(z, z') = -grad l(z')^T H^{-1} grad l(z)`` with ``H`` the Hessian of the mean
    training loss over ``(X, y)`` at ``model`` (exact, via autograd, over the parameters in
    ``param_names``; damped by ``damping * I``, 0.01 being OUR default, needed because
    ``H`` of a softmax model is singular along the class-shift direction).

    * Without a reference set (default): the self-influence magnitude
      ``g_i^T (H + damping I)^{-1} g_i = -I_up,loss(z_i, z_i)`` (Koh & Liang 2017, Section 5.4,
      used there to find mislabelled training points): the larger, the more suspicious.
    * With ``X_ref, y_ref`` (clean validation data): ``I_up,loss(z_i, ref) = -g_ref^T H^{-1} g_i``,
      how much upweighting ``z_i`` would INCREASE the reference loss; the larger, the more harmful.

    ``H`` is ``P x P``: for networks, restrict ``param_names`` (e.g. the last layer, as Koh & Liang
    do for Inception).
    """
    X, y = _data(model, X, y, "influence_scores")
    checks.number(damping, "damping", low=0.0, where="influence_scores")
    if (X_ref is None) != (y_ref is None):
        raise ValueError("give both X_ref and y_ref, or neither")
    params, fixed = _split_params(model, param_names)
    G = per_sample_gradients(model, loss_fn, X, y, param_names=param_names, batch_size=batch_size).double()
    H = _hessian(model, loss_fn, params, fixed, X, y, batch_size).double()
    H = H + damping * torch.eye(len(H), dtype=H.dtype, device=H.device)
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        raise ValueError("the damped Hessian is not positive definite (the model is not at a minimum?); "
                         "increase damping")
    if X_ref is None:
        HinvG = torch.cholesky_solve(G.T, L)  # (P, N)
        s = (G.T * HinvG).sum(0)
    else:
        X_ref, y_ref = _data(model, X_ref, y_ref, "influence_scores (reference data)")
        g_ref = per_sample_gradients(model, loss_fn, X_ref, y_ref, param_names=param_names,
                                     batch_size=batch_size).double().mean(0)
        s = G @ torch.cholesky_solve(g_ref[:, None], L).squeeze(1)
        s = -s  # I_up,loss(z_i, ref) = -g_ref^T H^{-1} g_i
    return s.to(X.dtype)


def influence_removal(model: nn.Module, loss_fn: Callable, X, y, remove_frac, *, X_ref=None, y_ref=None,
                      damping: float = 0.01, param_names=None, batch_size: int = 256) -> InfluenceResult:
    """Influence defense: remove the ``remove_frac`` share of points with the highest influence scores.

    Lu, Kamath & Yu (2023), Appendix C.10: the "Influence defense (Koh and Liang 2017) removes
    eps_d suspicious points according to higher influence functions". The paper does not say
    influence ON WHAT; the default is the self-influence of Koh & Liang's Section 5.4 (no clean
    data needed), ``X_ref, y_ref`` switches to the influence on a clean reference (validation)
    loss. See :func:`influence_scores`; ``remove_frac`` as in :func:`sever`. One round.
    """
    frac = checks.fraction(remove_frac, "remove_frac", where="influence_removal")
    s = influence_scores(model, loss_fn, X, y, X_ref=X_ref, y_ref=y_ref, damping=damping,
                         param_names=param_names, batch_size=batch_size)
    N = len(X)
    k = max(0, min(round(frac * N), N - 1))
    removed = torch.argsort(s, descending=True, stable=True)[:k]
    keep = torch.ones(N, dtype=torch.bool, device=X.device)
    keep[removed] = False
    return InfluenceResult(keep, removed, s)


# =============================================================================
# MaxUp (Gong, Ren, Ye & Liu, CVPR 2021)
# =============================================================================


def _in_domain(X, clamp, where: str) -> None:
    """The noise augmentation clamps to ``clamp``: data outside it would be silently moved into it."""
    if clamp is None:
        return
    lo, hi = (checks.number(c, "clamp", where=where) for c in clamp)
    if len(X) and (float(X.min()) < lo - 1e-6 or float(X.max()) > hi + 1e-6):
        raise checks.BadInput(f"{where}: the data lie in [{float(X.min()):g}, {float(X.max()):g}], outside "
                              f"clamp=({lo:g}, {hi:g}); divide [0, 255] data by 255, or pass clamp=None")


def _noise_augment(sigma: float, clamp):
    def aug(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        out = x + sigma * noise
        return out if clamp is None else out.clamp(*clamp)
    return aug


def maxup_loss(model: nn.Module, loss_fn: Callable, x, y, *, m: int = 4, augment: Callable | None = None,
               sigma: float = 0.1, clamp=(0.0, 1.0), include_clean: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """MaxUp loss (Gong et al. 2021, eq. 2): ``mean_i max_{j<=m} l(model(x_ij'), y_i)``.

    Each sample gets ``m`` random augmentations ``x_ij' = augment(x_i, generator)`` (all ``m``
    copies of the batch in ONE forward pass); the loss is the worst (largest) per-sample loss,
    averaged over the batch. Lu et al. (2023, Appendix C.10) describe MaxUp as "generates a set
    of augmented data with random perturbations", so the default ``augment`` adds Gaussian noise
    of std ``sigma`` and clamps to ``clamp`` (pixel range; ``None`` for none). ``m = 4`` is Gong
    et al.'s usual choice; ``sigma = 0.1`` is OURS (not given in either paper).
    ``include_clean=True`` adds the un-augmented sample to the candidates (then the MaxUp loss
    is never below the plain loss; Gong et al. do not include it). ``augment(x, generator)``
    receives the whole (m*B, ...) batch. Differentiable: use it as a training loss.
    """
    x, y = _data(model, x, y, "maxup_loss")
    checks.integer(m, "m", low=1, where="maxup_loss")
    if augment is None:
        sigma = checks.number(sigma, "sigma", low=0.0, where="maxup_loss")
        _in_domain(x, clamp, "maxup_loss")
        augment = _noise_augment(sigma, clamp)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    B = len(x)
    xa = augment(x.repeat(m, *([1] * (x.ndim - 1))), gen)
    if xa.shape != (m * B, *x.shape[1:]):
        raise ValueError(f"augment must keep the batch shape {(m * B, *x.shape[1:])}, got {tuple(xa.shape)}")
    ya = y.repeat(m, *([1] * (y.ndim - 1)))
    if include_clean:
        xa, ya = torch.cat([x, xa]), torch.cat([y, ya])
    losses = per_sample_losses(model, loss_fn, model(xa), ya).reshape(-1, B)  # (m[+1], B)
    return losses.max(0).values.mean()


def maxup_fit(model: nn.Module, X, y, *, loss_fn: Callable, epochs: int, lr: float, batch_size: int = 128,
              momentum: float = 0.9, m: int = 4, augment: Callable | None = None, sigma: float = 0.1,
              clamp=(0.0, 1.0), seed: int = 0) -> list:
    """Train ``model`` in place with the MaxUp loss (:func:`maxup_loss`), SGD with momentum, shuffled batches.

    The MaxUp defense of Lu et al. (2023), Appendix C.10: the victim minimises the worst-case
    loss over ``m`` random augmentations per sample. The recipe (SGD, ``momentum=0.9``,
    constant ``lr``) is ours; the paper gives none. All randomness from one generator seeded
    with ``seed``. Returns the mean MaxUp loss of every epoch; the model ends in eval mode.
    """
    where = "maxup_fit"
    X, y = _data(model, X, y, where)
    checks.integer(epochs, "epochs", where=where)
    checks.integer(batch_size, "batch_size", low=1, where=where)
    checks.number(lr, "lr", low=0.0, low_open=True, where=where)
    checks.fraction(momentum, "momentum", where=where)
    if augment is None:
        _in_domain(X, clamp, where)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum)
    gen = torch.Generator().manual_seed(seed)
    history, n = [], len(X)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen).to(X.device)
        total = 0.0
        for k in range(0, n, batch_size):
            idx = order[k:k + batch_size]
            loss = maxup_loss(model, loss_fn, X[idx], y[idx], m=m, augment=augment, sigma=sigma, clamp=clamp,
                              generator=gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += checks.finite_loss(loss, epoch, where) * len(idx)
        history.append(total / n)
    model.eval()
    return history
