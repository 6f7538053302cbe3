"""Chapter 20, "Poisoned deviation and robust DM" (Zheng & Li 2023, RDM-DC, ``papers/000``).

Drivers (``fn(cfg) -> record``):

* :func:`mixture_slopes`: Gaussian mixtures ``(1 - eps) D + eps B``; the plain mean's poisoned deviation
  against eps (fixed distance: eq. (6), slope 1; the lemma's boundary distance: slope 1/2) and d
  (slope 1/2), and the calibrated mean's error split into sampling floor, drop bias and poisoned
  deviation (:func:`poisonbook.estimators.deviation_parts`) with fitted log-log slopes.
* :func:`real_features`: ConvNet features (fresh random networks, DSA) of one Fashion-MNIST class with
  planted poisons (the class's own images, PGD in feature space towards another class's feature
  mean); the deviation and the cost (ms) of the five estimators.
* :func:`clean_utility`: DM and its four defended variants on clean data (Table 2's accuracy column).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from .. import augment as aug
from .. import condense, data, estimators, models
from .. import theory

__all__ = ["mixture", "slope", "mixture_slopes", "real_features", "clean_utility", "NAMES"]

NAMES = ("mean", "median", "trimmed_mean", "truncated_mean", "calibrated_mean")


def mixture(n: int, d: int, eps: float, distance: float, sigma: float = 1.0, seed: int = 0, reps: int = 1):
    """``reps`` batches (reps, n, d) of ``(1 - eps) N(0, s^2 I) + eps N(delta, s^2 I)``,
    ``delta = distance e_1``.

    Exactly ``round(eps n)`` poisons per batch (the first rows); returns (features, is_poison, delta).
    """
    g = torch.Generator().manual_seed(seed)
    p = int(round(eps * n))
    f = torch.randn(reps, n, d, generator=g, dtype=torch.float64) * sigma
    delta = torch.zeros(d, dtype=torch.float64)
    delta[0] = distance
    f[:, :p] += delta
    is_poison = torch.zeros(reps, n, dtype=torch.bool)
    is_poison[:, :p] = True
    return f, is_poison, delta


def slope(x, y) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def _parts(est, f, is_poison, seed):
    e = est.estimate(f, torch.Generator().manual_seed(seed))
    parts = estimators.deviation_parts(f, e.mean, is_poison, e.dropped, clean_mean=torch.zeros_like(e.mean))
    return {k: float(v.mean()) for k, v in parts.items() if v is not None}


def mixture_slopes(cfg) -> dict:
    """Deviation of the plain and the calibrated mean on Gaussian mixtures (eq. (6), Lemma 4.1)."""
    s, n, reps, d = cfg.sigma, cfg.n, cfg.reps, cfg.d
    eps_grid = list(cfg.eps_grid)
    curves = {"eps": eps_grid}
    # plain mean, fixed distance: eps ||delta|| (slope 1); at the boundary sqrt(alpha eps) s
    dists = {"fixed": lambda e: cfg.distance, "boundary": lambda e: math.sqrt(cfg.alpha * s**2 / e)}
    for name, dist in dists.items():
        vals = [_parts(estimators.mean, *mixture(n, d, e, dist(e), s, cfg.seed + i, reps)[:2], 0)["poisoned"]
                for i, e in enumerate(eps_grid)]
        curves[f"mean_{name}"] = vals
    d_grid = list(cfg.d_grid)
    curves["d"] = d_grid
    curves["mean_vs_d"] = []
    for i, dd in enumerate(d_grid):
        f, p, _ = mixture(n, dd, cfg.eps_d, cfg.per_coord * math.sqrt(dd), s, cfg.seed + 7 + i, reps)
        curves["mean_vs_d"].append(_parts(estimators.mean, f, p, 0)["poisoned"])
    # calibrated mean at the lemma's boundary distance: floor, drop bias, poisoned deviation
    cal = {k: [] for k in ("total", "floor", "drop_bias", "poisoned", "poisons_kept")}
    for i, e in enumerate(eps_grid):
        dist = math.sqrt(cfg.alpha_cal * s**2 / e)
        f, p, _ = mixture(n, d, e, dist, s, cfg.seed + 100 + i, reps)
        for k, v in _parts(estimators.calibrated_mean(e, cfg.power_iterations), f, p, i).items():
            cal[k].append(v)
    curves.update({f"cal_{k}": v for k, v in cal.items()})
    curves["cal_bound"] = [float(theory.calibrated_deviation_bound(e, math.sqrt(cfg.alpha_cal * s**2 / e)))
                           for e in eps_grid]
    metrics = {"slope_mean_fixed": slope(eps_grid, curves["mean_fixed"]),
               "slope_mean_boundary": slope(eps_grid, curves["mean_boundary"]),
               "slope_mean_d": slope(d_grid, curves["mean_vs_d"]),
               "slope_cal_total": slope(eps_grid, cal["total"]),
               "slope_cal_drop_bias": slope(eps_grid, cal["drop_bias"]),
               "slope_cal_floor": slope(eps_grid, cal["floor"]),
               "cal_poisons_kept_max": max(cal["poisons_kept"]),
               "floor_predicted": s * math.sqrt(d / n)}
    return {"metrics": metrics, "curves": curves,
            "scale": f"{reps} batches of n = {n} per point, d = {d}, sigma = {s}"}


# --------------------------------------------------------------------------- real features


def _standardised(x, stats):
    mean, std = stats
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def _feature_pgd(net, x, target, eps, steps, stats):
    """l_inf PGD in pixel space moving ``embed(x)`` towards ``target`` (features); images kept in [0, 1]."""
    delta = torch.zeros_like(x)
    step = 2.5 * eps / steps
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = ((net.embed(_standardised(x + delta, stats)) - target) ** 2).sum()
        (g,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() - step * g.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def real_features(cfg) -> dict:
    """Deviation of the five estimators on ConvNet features of one class with planted PGD poisons."""
    torch.manual_seed(cfg.seed)
    train = data.load(cfg.dataset, "train")
    stats = condense.channel_stats(train.x)
    xs = train.x[train.y == cfg.source_class][: cfg.class_size]
    xt = train.x[train.y == cfg.target_class][: cfg.class_size]
    shape = tuple(train.x.shape[1:])

    def net_(seed):
        torch.manual_seed(seed)
        return models.ConvNet(in_channels=shape[0], num_classes=10, im_size=shape[1], width=cfg.width,
                              depth=cfg.depth).eval().requires_grad_(False)

    craft = net_(cfg.seed + 999)  # the attacker's network
    with torch.no_grad():
        target = craft.embed(_standardised(xt, stats)).mean(0)
    gen = torch.Generator().manual_seed(cfg.seed)
    rows, timing = [], {k: [] for k in NAMES}
    strategy = aug.strategy_for(cfg.dataset)
    for eps_x in cfg.eps_x:
        n_p = int(round(max(cfg.fractions) * cfg.batch))
        pick = torch.randperm(len(xs), generator=gen)
        poisons = _feature_pgd(craft, xs[pick[:n_p]], target, eps_x, cfg.pgd_steps, stats)
        clean_pool = xs[pick[n_p:]]
        for frac in cfg.fractions:
            k_p = int(round(frac * cfg.batch))
            vals = {k: {"total": [], "poisoned": []} for k in NAMES}
            for r in range(cfg.draws):
                net = net_(int(torch.randint(0, 2**31, (1,), generator=gen)))
                cidx = torch.randperm(len(clean_pool), generator=gen)[: cfg.batch - k_p]
                xb = torch.cat([poisons[:k_p], clean_pool[cidx]])
                is_p = torch.zeros(1, cfg.batch, dtype=torch.bool)
                is_p[0, :k_p] = True
                dr = aug.draw(strategy, 1, generator=gen)
                with torch.no_grad():
                    f = net.embed(aug.apply(_standardised(xb, stats), dr)).unsqueeze(0)
                for name in NAMES:
                    est = estimators.ESTIMATORS[name](frac, power_iterations=cfg.power_iterations)
                    t0 = time.perf_counter()
                    e = est.estimate(f, gen)
                    timing[name].append(time.perf_counter() - t0)
                    parts = estimators.deviation_parts(f, e.mean, is_p, e.dropped)
                    vals[name]["total"].append(float(parts["total"][0]))
                    if parts["poisoned"] is not None:
                        vals[name]["poisoned"].append(float(parts["poisoned"][0]))
            for name in NAMES:
                tot, poi = vals[name]["total"], vals[name]["poisoned"]
                rows.append(dict(eps_x=eps_x, fraction=frac, estimator=name, error=float(np.mean(tot)),
                                 error_std=float(np.std(tot)),
                                 poisoned=float(np.mean(poi)) if poi else None))
    metrics = {f"{r['estimator']}.error@{r['fraction']}/{round(r['eps_x'] * 255)}": r["error"] for r in rows}
    metrics.update({f"{k}.ms": 1000 * float(np.median(v)) for k, v in timing.items()})
    return {"metrics": metrics, "table": rows,
            "scale": f"{cfg.dataset} class {cfg.source_class}, batches of {cfg.batch}, {cfg.draws} "
                     f"network/DSA draws per cell, ConvNet width {cfg.width} depth {cfg.depth}, "
                     f"PGD {cfg.pgd_steps} steps"}


# ------------------------------------------------------------------ clean utility (Table 2, accuracy)


def clean_utility(cfg) -> dict:
    """DM and the four defended variants condensed from clean data; test accuracy mean +- std over networks.

    The five sets are condensed together by ``condense.dm_multi`` against one real pass per iteration: they
    draw the same networks, real batches and DSA parameters (common random numbers), and the calibrated mean's
    power method draws from its own generator (``estimator_seed``), so those shared draws are exactly equal for
    all five. The evaluation networks (seed + i) are the same for all five. ``condense_seconds`` is the shared
    condensation; ``<name>.seconds`` each set's evaluation.
    """
    torch.set_num_threads(cfg.threads) if cfg.threads else None
    train = data.load(cfg.dataset, "train")
    test = data.load(cfg.dataset, "test")
    if cfg.train_size:
        train = data.subset(train, cfg.train_size, seed=cfg.seed)
    if cfg.test_size:
        test = data.subset(test, cfg.test_size, seed=cfg.seed)
    strategy = aug.strategy_for(cfg.dataset)
    metrics, artefacts = {}, {}
    variants = [condense.DMVariant(estimator=estimators.ESTIMATORS[name](cfg.eps, power_iterations=cfg.power_iterations))
                for name in NAMES]
    t0 = time.perf_counter()
    sets = condense.dm_multi(train.x, train.y, cfg.ipc, variants, iterations=cfg.iterations, lr=cfg.lr,
                             momentum=cfg.momentum, batch_real=cfg.batch_real, init="noise", strategy=strategy,
                             width=cfg.width, depth=cfg.depth, seed=cfg.seed, estimator_seed=cfg.seed)
    metrics["condense_seconds"] = time.perf_counter() - t0
    for name, syn in zip(NAMES, sets):
        t0 = time.perf_counter()
        ev = condense.evaluate_synthetic(syn.x, syn.y, test.x, test.y, num_models=cfg.eval_models,
                                         epochs=cfg.eval_epochs, strategy=strategy, width=cfg.width,
                                         depth=cfg.depth, stats=syn.stats, seed=cfg.seed)
        metrics[f"{name}.acc_mean"] = 100 * ev.mean
        metrics[f"{name}.acc_std"] = 100 * ev.std
        metrics[f"{name}.seconds"] = time.perf_counter() - t0
        artefacts[f"{name}.images"] = syn.x[:: cfg.ipc].numpy()
    return {"metrics": metrics, "artefacts": artefacts,
            "scale": f"{cfg.dataset} ({len(train.y)} training images), ipc {cfg.ipc}, {cfg.iterations} DM "
                     f"iterations (paper 20,000), ConvNet width {cfg.width} depth {cfg.depth}, "
                     f"{cfg.eval_models} "
                     f"evaluation networks x {cfg.eval_epochs} epochs, class fraction eps {cfg.eps}"}
