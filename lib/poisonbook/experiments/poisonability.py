"""Chapter 30, "When can a model be poisoned?" (Lu, Kamath & Yu 2023, Figures 1, 2, 5, 6 and Table 8).

The data sets of the paper's low-dimensional experiments (Appendix C.1), GC on bias-free logistic targets with the
chapter's learning-rate rule, and one driver per record: :func:`figure1_or`, :func:`figure2_gauss`,
:func:`figure2_mnist17`, :func:`least_squares` and :func:`table8_scaling`. Binary experiments run in float64.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from sklearn.datasets import make_classification
from torch import nn
from torch.nn import functional as F

from .. import data, models, poison, theory
from ..profiles import Config

__all__ = ["DT", "LOGISTIC", "gc_step", "or_dataset", "or_tensors", "ten_d_gaussian", "mnist17", "linear_model",
           "run_gc",
           "fit_logistic", "sign_acc", "above_threshold", "figure1_or", "figure2_gauss", "figure2_mnist17",
           "least_squares", "table8_scaling"]

DT = torch.float64
LOGISTIC = poison.margin_loss_fn("logistic")


def gc_step(eta: float, n: int, curvature: float = 1.0) -> float:
    """The book's one learning-rate rule for GC (chapters 30 and 31): ``lr = eta n / curvature``.

    Why (derived in chapter 30, section 9): a GD step on eq. (33) moves poison ``j`` by ``-(lr/n) J_j^T r`` (eq. 34;
    ``r = g(mu) + eps g(nu)``, ``J_j = d grad l(x_j) / d x_j``), so ``eta = lr / n`` is the step in the poison's own
    units, whatever ``n``. ``curvature`` is the scale of the objective's Hessian in the poisons where it is known:
    for a bias-free binary linear target near a canceling set the Gauss-Newton part dominates and scales with
    ``eps_d ||w||^2`` (least squares: ``eps_d``); for networks, where ``r`` stays large below tau and the second
    derivative of the gradient dominates, 1 (``eps_d`` there diverged: chapter 31's profile note). The paper uses a
    constant 0.5 (Appendix C.1); its ``paper`` profiles keep that.
    """
    return eta * n / curvature


def or_dataset(copies: int, noise: float, seed: int):
    """OR data (Appendix C.1): the four points of {0,1}^2, ``copies`` noisy copies each; label +1 iff x1 OR x2."""
    g = np.random.default_rng(seed)
    base = np.repeat(np.array([[0., 0.], [0., 1.], [1., 0.], [1., 1.]]), copies, 0)
    return base + noise * g.standard_normal(base.shape), np.where(base.max(1) > 0, 1.0, -1.0)


def or_tensors(cfg: Config, seed: int):
    """Training and test OR data (test drawn with ``seed + 1000``) as float64 tensors."""
    X, y = or_dataset(cfg.copies, cfg.noise, seed)
    Xt, yt = or_dataset(cfg.copies, cfg.noise, seed + 1000)
    return tuple(torch.tensor(a, dtype=DT) for a in (X, y, Xt, yt))


def ten_d_gaussian(cfg: Config, seed: int):
    """10-D Gaussian dataset (Appendix C.1): sklearn make_classification, labels in {-1, +1}; a seeded split."""
    X, y = make_classification(n_samples=cfg.n_samples, n_features=cfg.n_features, random_state=seed)
    idx = np.random.default_rng(seed).permutation(len(y))
    n_tr = int(cfg.train_fraction * len(y))
    X, y = torch.tensor(X[idx], dtype=DT), torch.tensor(2.0 * y[idx] - 1, dtype=DT)
    return X[:n_tr], y[:n_tr], X[n_tr:], y[n_tr:]


def mnist17(cfg: Config, seed: int):
    """MNIST-17: digits 1 and 7 of ``cfg.dataset`` (label +1 for 7), flattened, at most ``cfg.train_size`` for training."""
    def pick(d):
        keep = (d.y == 1) | (d.y == 7)
        return d.x[keep].flatten(1).to(DT), torch.where(d.y[keep] == 7, 1.0, -1.0).to(DT)

    X, y = pick(data.load(cfg.dataset, "train+val"))
    Xt, yt = pick(data.load(cfg.dataset, "test"))
    if cfg.train_size and cfg.train_size < len(X):
        idx = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))[:cfg.train_size]
        X, y = X[idx], y[idx]
    return X, y, Xt, yt


def linear_model(w) -> nn.Module:
    """The bias-free linear model with weights ``w`` (float64)."""
    m = nn.Linear(len(w), 1, bias=False).to(DT)
    with torch.no_grad():
        m.weight.copy_(torch.as_tensor(np.asarray(w), dtype=DT)[None])
    return m


def run_gc(w, X, y, eps, cfg: Config, epochs: int | None = None, lr: float | None = None, seed: int = 0):
    """GC (Algorithm 1) on a bias-free logistic target; ``lr`` by :func:`gc_step` unless given.

    ``cfg.gc_eta`` with curvature ``eps_d ||w||^2``."""
    w = np.asarray(w, float)
    lr = gc_step(cfg.gc_eta, len(X), eps * float(w @ w)) if lr is None else lr
    return poison.gradient_canceling(linear_model(w), LOGISTIC, X, y, eps, epochs=epochs or cfg.gc_epochs,
                                     lr=lr, momentum=cfg.gc_momentum, seed=seed)


def _retrain(X, y, Xp, yp, Xt, yt, cfg: Config):
    return poison.retrain(lambda: nn.Linear(X.shape[1], 1, bias=False).to(DT), X, y, Xp, yp, Xt, yt,
                          loss_fn=LOGISTIC, epochs=cfg.retrain_epochs, lr=cfg.retrain_lr)


def fit_logistic(X, y, epochs: int, lr: float) -> nn.Module:
    """Bias-free logistic regression by full-batch gradient descent from zero."""
    m = nn.Linear(X.shape[1], 1, bias=False).to(DT)
    nn.init.zeros_(m.weight)
    opt = torch.optim.SGD(m.parameters(), lr=lr)
    for _ in range(epochs):
        opt.zero_grad()
        LOGISTIC(m(X), y).backward()
        opt.step()
    return m


def sign_acc(m, X, y) -> float:
    with torch.no_grad():
        return float(((m(X).reshape(-1) > 0) == (y > 0)).double().mean())


def above_threshold(cfg: Config, seed: int = 0) -> dict:
    """At ``eps_d = 2 tau`` of ``cfg.check_target``: GC with the check's lr and with the paper's 0.5; the retrained w."""
    Xo, yo, Xt, yt = or_tensors(cfg, seed)
    w0 = np.array(cfg.check_target)
    tau0 = theory.poisoning_threshold(w0, Xo.numpy(), yo.numpy(), "logistic")
    gc = run_gc(w0, Xo, yo, 2 * tau0, cfg, epochs=cfg.check_epochs, lr=cfg.check_lr, seed=seed)
    gc_paper = run_gc(w0, Xo, yo, 2 * tau0, cfg, epochs=cfg.check_epochs, lr=0.5, seed=seed)
    rt = _retrain(Xo, yo, gc.X_p, gc.y_p, Xt, yt, cfg)
    return {"tau": tau0, "eps_d": 2 * tau0, "gc_norm": gc.grad_norms[-1], "gc_norm_paper_lr": gc_paper.grad_norms[-1],
            "w_retrained": rt.model.weight.detach().reshape(-1).tolist(), "w_target": w0.tolist()}


def figure1_or(cfg: Config) -> dict:
    """Figure 1 on the OR data: tau and target accuracy over a grid of targets; GC and retraining per target and eps_d.

    Artefacts: the grid (``grid``), ``tau_map`` and ``acc_map``; ``runs``: one row per (target, eps_d).
    """
    seed = cfg.get("seed", 0)
    Xo, yo, Xt, yt = or_tensors(cfg, seed)
    X, y, X_test, y_test = Xo.numpy(), yo.numpy(), Xt.numpy(), yt.numpy()
    grid = np.linspace(cfg.grid_lo, 0.0, cfg.grid_size + 1)[:-1]
    tau_map = np.array([[theory.poisoning_threshold(np.array([a, b]), X, y, "logistic") for a in grid] for b in grid])
    acc_map = np.array([[np.mean(np.sign(X_test @ np.array([a, b])) == y_test) for a in grid] for b in grid])
    rows = []
    for w in cfg.targets:
        w = np.array(w, float)
        tau_w = theory.poisoning_threshold(w, X, y, "logistic")
        for eps in cfg.eps_list:
            gc = run_gc(w, Xo, yo, eps, cfg, seed=seed)
            rt = _retrain(Xo, yo, gc.X_p, gc.y_p, Xt, yt, cfg)
            rows.append({"target": str(tuple(float(v) for v in w)), "tau": tau_w, "eps_d": eps,
                         "gc_grad_norm": gc.grad_norms[-1],
                         "lower_bound": theory.mixed_gradient_lower_bound(w, X, y, round(eps * len(X)) / len(X)),
                         "retrained_acc": rt.accuracy, "target_acc": float(np.mean(np.sign(X_test @ w) == y_test))})
    clean = _retrain(Xo, yo, Xo[:1], yo[:1], Xt, yt, cfg)  # one duplicated clean point: the clean model
    above = [r for r in rows if r["eps_d"] >= 1.5 * r["tau"]]
    check = above_threshold(cfg, seed)
    metrics = {"clean_accuracy": clean.accuracy, "tau": {r["target"]: r["tau"] for r in rows}, "runs": rows,
               "above_1.5tau_reached": sum(r["gc_grad_norm"] < 1e-4 for r in above), "above_1.5tau_total": len(above),
               "check_target_tau": check["tau"], "check_gc_norm_at_2tau": check["gc_norm"],
               "check_gc_norm_at_2tau_paper_lr": check["gc_norm_paper_lr"]}
    return {"metrics": metrics, "artefacts": {"grid": grid, "tau_map": tau_map, "acc_map": acc_map},
            "scale": f"OR data, {len(X)} points, {len(cfg.targets)} targets x {len(cfg.eps_list)} eps_d, "
                     f"GC {cfg.gc_epochs} epochs"}


def _figure2(X, y, Xt, yt, cfg: Config, seed: int) -> dict:
    """Figure 2: a GradPC target of the clean bias-free LR; GC and retraining at every eps_d."""
    clean = fit_logistic(X, y, cfg.clean_epochs, cfg.clean_lr)
    target = poison.grad_pc(clean, LOGISTIC, X, y, cfg.eps_w, seed=seed).model
    w = target.weight.detach().reshape(-1).numpy()
    Xn, yn = X.numpy(), y.numpy()
    target_acc = sign_acc(target, Xt, yt)
    rows = []
    for eps in cfg.eps_list:
        gc = run_gc(w, X, y, eps, cfg, seed=seed)
        rt = _retrain(X, y, gc.X_p, gc.y_p, Xt, yt, cfg)
        rows.append({"eps_d": eps, "gc_grad_norm": gc.grad_norms[-1],
                     "lower_bound": theory.mixed_gradient_lower_bound(w, Xn, yn, round(eps * len(Xn)) / len(Xn)),
                     "retrained_acc": rt.accuracy, "acc_minus_target": rt.accuracy - target_acc})
    acc = sign_acc(clean, Xt, yt)
    metrics = {"clean_acc": acc, "clean_acc_percent": 100 * acc, "target_acc": target_acc,
               "tau": theory.poisoning_threshold(w, Xn, yn, "logistic"), "n_train": len(X), "runs": rows}
    return {"metrics": metrics,
            "scale": f"{len(X)} training points, GradPC eps_w={cfg.eps_w}, GC {cfg.gc_epochs} epochs"}


def figure2_gauss(cfg: Config) -> dict:
    """Figure 2 on the 10-D Gaussian data."""
    return _figure2(*ten_d_gaussian(cfg, cfg.get("seed", 0)), cfg, cfg.get("seed", 0))


def figure2_mnist17(cfg: Config) -> dict:
    """Figure 2 on MNIST-17."""
    return _figure2(*mnist17(cfg, cfg.get("seed", 0)), cfg, cfg.get("seed", 0))


class _Residual(nn.Module):
    """y ~ w x + b written as a model of z = (x, y): it outputs the residual w x + b - y."""

    def __init__(self, w: float, b: float):
        super().__init__()
        self.lin = nn.Linear(1, 1).to(DT)
        with torch.no_grad():
            self.lin.weight.fill_(w)
            self.lin.bias.fill_(b)

    def forward(self, Z):
        return self.lin(Z[:, :1]).reshape(-1) - Z[:, 1]


def _half_sq(r, _):  # eq. (8): the least-squares loss of the residual
    return 0.5 * (r ** 2).mean()


def _lstsq_fit(Z: torch.Tensor) -> np.ndarray:
    Z = Z.detach().numpy()
    return np.linalg.lstsq(np.hstack([Z[:, :1], np.ones((len(Z), 1))]), Z[:, 1], rcond=None)[0]


def least_squares(cfg: Config) -> dict:
    """Figures 5 and 6: GC and gradient matching against a flipped-slope target of least squares on 2-D Gaussian data.

    The poisons are whole points z = (x, y). Gradient matching is ``poison.gradient_matching`` with the reversed
    loss ``J = -l`` (eq. 36), no l_inf ball and no pixel box. Artefacts: the clean points and every poison set.
    """
    seed = cfg.get("seed", 0)
    XY = np.random.default_rng(seed + 7).multivariate_normal([0, 0], [[1, 0.8], [0.8, 1]], size=cfg.n)
    Z, no_label = torch.tensor(XY, dtype=DT), torch.zeros(len(XY), dtype=DT)
    w_t, b_t = cfg.target
    model = _Residual(w_t, b_t)
    rows, artefacts = [], {"clean": XY}
    for eps in cfg.eps_list:
        gc = poison.gradient_canceling(model, _half_sq, Z, no_label, eps, epochs=cfg.gc_epochs,
                                       lr=gc_step(cfg.gc_eta, len(Z), eps),  # curvature eps_d
                                       momentum=0.9, seed=seed)
        gm = poison.gradient_matching(model, Z, no_label, eps, loss_fn=_half_sq, reversed_loss_fn=lambda r, y: -_half_sq(r, y),
                                      steps=cfg.gm_steps, lr=cfg.gm_lr, eps_x=None, box=None, seed=seed)
        w_gc, w_gm = _lstsq_fit(torch.cat([Z, gc.X_p])), _lstsq_fit(torch.cat([Z, gm.X_p]))
        artefacts[f"gc_{eps:g}"], artefacts[f"gm_{eps:g}"] = gc.X_p, gm.X_p
        rows.append({"eps_d": eps, "GC ||g(chi)||": gc.grad_norms[-1], "GC slope": w_gc[0], "GC intercept": w_gc[1],
                     "GM slope": w_gm[0], "GM intercept": w_gm[1],
                     "mean |x| of GC poisons": float(gc.X_p[:, 0].abs().mean()),
                     "GC distance to target": float(np.hypot(w_gc[0] - w_t, w_gc[1] - b_t)),
                     "GM distance to target": float(np.hypot(w_gm[0] - w_t, w_gm[1] - b_t))})
    return {"metrics": {"runs": rows}, "artefacts": artefacts,
            "scale": f"{cfg.n} points, GC {cfg.gc_epochs} epochs, GM {cfg.gm_steps} Adam steps"}


def table8_scaling(cfg: Config) -> dict:
    """Table 8 (Appendix C.8): tau(2) of a GradPC target W and of W/2, and GC's accuracy drop for each, on MNIST LR."""
    seed = cfg.get("seed", 0)
    tr, te = data.load(cfg.dataset, "train"), data.load(cfg.dataset, "test")
    if cfg.train_size:
        tr = data.subset(tr, cfg.train_size, seed=seed)
    if cfg.test_size:
        te = data.subset(te, cfg.test_size, seed=seed)
    X, y, Xt, yt = tr.x, tr.y, te.x, te.y
    torch.manual_seed(seed)
    clean = models.LogisticRegression()
    opt = torch.optim.SGD(clean.parameters(), lr=cfg.clean_lr)
    for _ in range(cfg.clean_epochs):
        opt.zero_grad()
        F.cross_entropy(clean(X), y).backward()
        opt.step()

    def acc_of(m):
        with torch.no_grad():
            return float((m(Xt).argmax(1) == yt).float().mean())

    target = poison.grad_pc(clean, F.cross_entropy, X, y, cfg.eps_w, seed=seed).model
    half = copy.deepcopy(target)
    with torch.no_grad():
        for p in half.parameters():
            p.mul_(0.5)
    clean_acc, table = acc_of(clean), {}
    for key, mdl in [("w", target), ("w_half", half)]:
        with torch.no_grad():
            H = mdl(X).double()
        row = {"tau2": theory.threshold_from_logits(H, y.numpy(), c_bound=2), "tau10": theory.threshold_from_logits(H, y.numpy()),
               "target_acc": acc_of(mdl)}
        for eps in cfg.eps_list:
            gc = poison.gradient_canceling(mdl, F.cross_entropy, X, y, eps, epochs=cfg.gc_epochs,
                                           lr=gc_step(cfg.gc_eta, len(X)), seed=seed)
            rt = poison.retrain(models.LogisticRegression, X, y, gc.X_p, gc.y_p, Xt, yt, epochs=cfg.retrain_epochs,
                                lr=cfg.retrain_lr, seed=seed)
            row[f"drop@{eps}"], row[f"gnorm@{eps}"] = 100 * (rt.accuracy - clean_acc), gc.grad_norms[-1]
        table[key] = row
    metrics = {"clean_acc": clean_acc, "gradpc_drop": 100 * (table["w"]["target_acc"] - clean_acc),
               "tau_w": table["w"]["tau2"], "tau_w_half": table["w_half"]["tau2"],
               **{f"drop@{eps}_{key}": table[key][f"drop@{eps}"] for key in table for eps in cfg.eps_list}}
    return {"metrics": metrics, "table": table,
            "scale": f"{len(X)} {cfg.dataset} training images, GradPC eps_w={cfg.eps_w}, GC {cfg.gc_epochs} epochs"}
