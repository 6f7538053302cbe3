"""Chapter 21, "Targeted poisoning of dataset condensation" (Zheng & Li 2023, RDM-DC, ``papers/000``, Sec. 3, 5).

The protocol of Sec. 5.1: for target seed s, a random test image and a random other label
(:func:`choose_target`); P = rate x N poisons crafted against it (:func:`craft`, cached by attack, target,
eps, rate, seed and code); the poisons replace P training images of class ``y_adv``; the poisoned set is
condensed by DM with a real-mean estimator (plain mean = DM, or a defence); networks trained on the
synthetic set predict the target. :func:`attack_success` runs it over (targets x condensation runs), the
paper's 5 x 5, and returns ASR and test accuracy, mean +- std, with a binomial interval on the ASR.

Drivers (``fn(cfg) -> record``): :func:`protocol` (every cell of Tables 1, 2, 3, 5, sharing crafted poisons),
:func:`diagnostics` (the numerical checks of eqs. (4), (5) and of the poisoned deviation on held-out
networks).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from scipy import stats as sps

from .. import augment as aug
from .. import cache, checks, condense, data, estimators, models
from ..poison import targeted

__all__ = ["METHODS", "choose_target", "load_data", "ensemble", "craft", "poisoned_set", "attack_success",
           "wilson", "clopper_pearson", "protocol", "diagnostics", "cell"]

METHODS = ("mean", "median", "trimmed_mean", "truncated_mean", "calibrated_mean")
LABELS = {"mean": "DM", "median": "DM + Median", "trimmed_mean": "DM + Trim", "truncated_mean": "DM + Truncated",
          "calibrated_mean": "RDM-DC"}


def attack_name(attack: str, eps: float | None) -> str:
    """``gm@64``, ``dm@128``, ``direct``, ``clean``: an attack with its l_inf radius in /255 units."""
    return f"{attack}@{round(eps * 255)}" if attack in ("gm", "dm") else attack


def cell(attack: str, eps: float | None, method: str) -> str:
    """The metric prefix of one table cell: ``gm@64.mean``, ``direct.calibrated_mean``, ``clean.mean``."""
    return f"{attack_name(attack, eps)}.{method}"


def choose_target(y_test: torch.Tensor, num_classes: int, seed: int) -> tuple[int, int]:
    """Target of seed ``seed`` (Sec. 5.1, Fig. 2): a random test image and a random label other than its own."""
    y_test = checks.labels(y_test, "y_test", num_classes=num_classes, where="choose_target")
    g = torch.Generator().manual_seed(checks.integer(seed, "seed", where="choose_target"))
    idx = int(torch.randint(len(y_test), (1,), generator=g))
    y_adv = (int(y_test[idx]) + int(torch.randint(1, num_classes, (1,), generator=g))) % num_classes
    return idx, y_adv


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial rate k/n."""
    if n == 0:
        return 0.0, 1.0
    z = sps.norm.ppf(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for a binomial rate k/n."""
    a = 1 - level
    lo = 0.0 if k == 0 else float(sps.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(sps.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def load_data(cfg):
    """(train, test) of ``cfg.dataset``, subsampled to ``cfg.train_size`` / ``cfg.test_size`` when set."""
    train, test = data.load(cfg.dataset, "train"), data.load(cfg.dataset, "test")
    if cfg.train_size:
        train = data.subset(train, cfg.train_size, seed=cfg.seed)
    if cfg.test_size:
        test = data.subset(test, cfg.test_size, seed=cfg.seed)
    return train, test


def _factory(shape, cfg):
    return lambda: models.ConvNet(in_channels=shape[0], num_classes=10, im_size=shape[1], width=cfg.width,
                                  depth=cfg.depth)


def _stats(train):
    return condense.channel_stats(train.x)


def ensemble(train, cfg, *, root=None) -> list:
    """The pretrained clean ensemble of Witches' Brew (``cfg.ensemble`` members, staggered epochs up to
    ``cfg.ensemble_epochs``; :func:`poisonbook.poison.targeted.stagger_epochs`), cached by data and settings."""
    epochs = targeted.stagger_epochs(cfg.ensemble, cfg.ensemble_epochs)
    key = dict(kind="ensemble", data=cache.fingerprint(train.x, train.y), epochs=epochs, width=cfg.width,
               depth=cfg.depth, seed=cfg.seed)
    factory = _factory(train.shape, cfg)

    def compute():
        nets = targeted.pretrain_ensemble(train.x, train.y, epochs, factory, stats=_stats(train), seed=cfg.seed)
        return [n.state_dict() for n in nets]

    states = cache.cached("targeted-ensemble", key, compute, root=root)
    nets = []
    for s in states:
        n = factory()
        n.load_state_dict(s)
        nets.append(n.eval().requires_grad_(False))
    return nets


def craft(attack: str, train, x_target, y_adv: int, eps: float, cfg, *, target: int, seed: int, root=None,
          on_compute=None) -> dict:
    """Poisons of ``attack`` ("gm", "dm", "direct") against ``(x_target, y_adv)``, cached by
    (attack, target, eps, rate, seed, the crafting settings, the data and the library code).

    Returns ``{"indices": (P,) training indices replaced, "x": (P, C, H, W) poisons, "losses": per restart,
    "curve": the kept restart's objective per step}``. ``on_compute`` is called when the poisons are crafted
    (not loaded)."""
    checks.choice(attack, "attack", targeted.ATTACKS, where="craft")
    eps = 0.0 if attack == "direct" else checks.epsilon(eps, "eps", allow_zero=False, where="craft")
    settings = ({"ensemble": cfg.ensemble, "ensemble_epochs": cfg.ensemble_epochs, "steps": cfg.gm_steps,
                 "restarts": cfg.gm_restarts} if attack == "gm" else
                {"steps": cfg.dm_steps, "restarts": cfg.dm_restarts, "select_nets": cfg.select_nets}
                if attack == "dm" else {})
    key = dict(attack=attack, target=int(target), y_adv=int(y_adv), eps=eps, rate=cfg.rate, seed=int(seed),
               width=cfg.width, depth=cfg.depth, settings=settings, data=cache.fingerprint(train.x, train.y),
               x_target=cache.fingerprint(x_target))

    def compute():
        if on_compute is not None:
            on_compute(key)
        g = torch.Generator().manual_seed(seed)
        idx = targeted.choose_poisons(train.y, y_adv, targeted.budget(len(train.y), cfg.rate), g)
        xp = train.x[idx]
        strategy, stats = aug.strategy_for(cfg.dataset), _stats(train)
        if attack == "direct":
            return {"indices": idx, "x": targeted.direct(x_target, len(idx)), "losses": [], "curve": []}
        if attack == "gm":
            res = targeted.witches_brew(ensemble(train, cfg, root=root), x_target, y_adv, xp, eps, stats=stats,
                                        steps=cfg.gm_steps, restarts=cfg.gm_restarts, strategy=strategy, seed=seed)
        else:
            res = targeted.dm_poison(x_target, xp, eps, _factory(train.shape, cfg), stats=stats, steps=cfg.dm_steps,
                                     restarts=cfg.dm_restarts, strategy=strategy, select_nets=cfg.select_nets,
                                     seed=seed)
        return {"indices": idx, "x": res.x, "losses": res.losses, "curve": res.curve}

    return cache.cached("targeted-poisons", key, compute, root=root)


def poisoned_set(train, poisons: dict):
    """The training set with the poisons in place of the images they replace (same size, same labels)."""
    return targeted.insert(train.x, poisons["indices"], poisons["x"])


def _condense_eval(x, y, test, x_target, y_adv, methods, class_eps, seed, cfg) -> list[tuple]:
    """DM with each estimator of ``methods`` on one (poisoned) training set, condensed together by
    ``condense.dm_multi``: one real pass per iteration and the same network, batch and DSA draws for every
    method (the calibrated mean's power method on its own generator, ``estimator_seed``). Per method:
    (test accuracy, fraction of evaluation networks predicting ``y_adv`` for the target, their mean
    probability of ``y_adv``, the synthetic set)."""
    variants = [condense.DMVariant(estimator=estimators.ESTIMATORS[m](class_eps, power_iterations=cfg.power_iterations))
                for m in methods]
    strategy = aug.strategy_for(cfg.dataset)
    sets = condense.dm_multi(x, y, cfg.ipc, variants, iterations=cfg.iterations, lr=cfg.lr, momentum=cfg.momentum,
                             batch_real=cfg.batch_real, init="noise", strategy=strategy, width=cfg.width,
                             depth=cfg.depth, seed=seed, estimator_seed=seed)
    out = []
    for syn in sets:
        ev = condense.evaluate_synthetic(syn.x, syn.y, test.x, test.y, num_models=cfg.eval_models,
                                         epochs=cfg.eval_epochs, strategy=strategy, width=cfg.width,
                                         depth=cfg.depth, stats=syn.stats, seed=seed, probe=x_target,
                                         keep_models=True)
        hit = float((ev.predictions[:, 0] == y_adv).float().mean())
        with torch.no_grad():  # a continuous companion of the 0/1 outcome: the networks' probability of y_adv
            p_adv = float(torch.stack([net(x_target).softmax(1)[0, y_adv] for net in ev.models]).mean())
        out.append((ev.mean, hit, p_adv, syn))
    return out


def _summary(outcomes: list[int], accs: list[float], p_adv: list[float]) -> dict:
    k, n = int(sum(outcomes)), len(outcomes)
    lo, hi = wilson(k, n)
    return {"asr": 100 * k / n, "asr_std": 100 * float(np.std(outcomes)), "asr_lo": 100 * lo, "asr_hi": 100 * hi,
            "successes": k, "n": n, "acc_mean": 100 * float(np.mean(accs)), "acc_std": 100 * float(np.std(accs)),
            "p_adv": 100 * float(np.mean(p_adv)), "p_adv_std": 100 * float(np.std(p_adv))}


def attack_success(cfg, attack: str, eps: float | None, methods=("mean",), *, train=None, test=None, root=None,
                   keep=None) -> dict:
    """ASR and clean test accuracy of DM with each estimator in ``methods`` under ``attack`` (Sec. 5.1).

    For every target seed in ``cfg.targets`` (:func:`choose_target`) the poisons are crafted once
    (:func:`craft`; ``attack="clean"`` condenses the clean set, the baseline); for every condensation run
    ``r < cfg.runs`` every method condenses the same poisoned set in one ``condense.dm_multi`` call (the same
    networks, real batches and DSA draws: common random numbers, one real pass) and ``cfg.eval_models`` networks are
    trained on the synthetic set. The outcome of (target, run) is 1 when the majority of those networks
    predicts ``y_adv`` for the target (one network: the paper's 0/1). Per method: ``asr`` (%) and its
    population std over the (targets x runs) outcomes (as the paper reports), the Wilson 95% interval
    ``asr_lo``/``asr_hi``, ``acc_mean``/``acc_std`` (%), and ``p_adv``/``p_adv_std``: the evaluation networks'
    softmax probability of ``y_adv`` on the target (%), a continuous measure of the same pull. The estimators' eps is the poisoned fraction of
    class ``y_adv`` (Sec. 4.3: ``estimators.class_eps``). ``keep(target, run, method, syn)`` sees every
    synthetic set.
    """
    for m in methods:
        checks.choice(m, "method", METHODS, where="attack_success")
    checks.choice(attack, "attack", ("clean", *targeted.ATTACKS), where="attack_success")
    if train is None:
        train, test = load_data(cfg)
    outcomes, accs, probs = ({m: [] for m in methods} for _ in range(3))
    rows = []
    for s in cfg.targets:
        ti, y_adv = choose_target(test.y, train.num_classes, s)
        x_t = test.x[ti:ti + 1]
        p = targeted.budget(len(train.y), cfg.rate)
        class_eps = estimators.class_eps(p, int((train.y == y_adv).sum()))
        x = train.x
        if attack != "clean":
            x = poisoned_set(train, craft(attack, train, x_t, y_adv, eps, cfg, target=ti, seed=cfg.seed + s,
                                          root=root))
        for r in range(cfg.runs):
            runs = _condense_eval(x, train.y, test, x_t, y_adv, methods, class_eps, cfg.seed + 100 * s + r, cfg)
            for m, (acc, hit, p_adv, syn) in zip(methods, runs):
                outcomes[m].append(int(hit > 0.5))
                accs[m].append(acc)
                probs[m].append(p_adv)
                rows.append(dict(target_seed=s, target=ti, y_true=int(test.y[ti]), y_adv=y_adv, run=r, method=m,
                                 acc=100 * acc, hit=hit, p_adv=p_adv))
                if keep is not None:
                    keep(s, r, m, syn)
    return {"summary": {m: _summary(outcomes[m], accs[m], probs[m]) for m in methods}, "rows": rows}


# --------------------------------------------------------------------------- drivers


def _attacks(cfg):
    """The attacks of the protocol with the methods each is condensed with (Tables 1, 2, 3, 5)."""
    lo, hi = cfg.eps_list
    return [("clean", None, ("mean",)), ("gm", lo, ("mean", "calibrated_mean")),
            ("dm", lo, METHODS), ("gm", hi, ("mean",)), ("dm", hi, ("mean",)),
            ("direct", None, ("mean", "calibrated_mean"))]


def protocol(cfg) -> dict:
    """Every cell of Tables 1, 2, 3 and 5 (and a clean baseline) by :func:`attack_success`; the targets
    (Fig. 2), example poisons and the synthetic images of class ``y_adv`` for the first target and run."""
    torch.set_num_threads(cfg.threads) if cfg.threads else None
    train, test = load_data(cfg)
    metrics, rows, artefacts, seconds = {}, [], {}, {}
    first = cfg.targets[0]
    tgt = [choose_target(test.y, train.num_classes, s) for s in cfg.targets]
    artefacts["targets"] = torch.cat([test.x[i:i + 1] for i, _ in tgt])
    ti, y_adv = tgt[0]
    for attack, eps, methods in _attacks(cfg):
        name = attack_name(attack, eps)
        t0 = time.perf_counter()

        def keep(s, r, m, syn, name=name):
            if s == first and r == 0 and m in ("mean", "calibrated_mean"):
                artefacts[f"syn.{name}.{m}"] = syn.x[syn.y == y_adv]

        out = attack_success(cfg, attack, eps, methods, train=train, test=test, keep=keep)
        seconds[name] = time.perf_counter() - t0
        for m, summ in out["summary"].items():
            metrics.update({f"{cell(attack, eps, m)}.{k}": v for k, v in summ.items()})
        rows += [dict(r, attack=name) for r in out["rows"]]
        if attack != "clean":
            p = craft(attack, train, test.x[ti:ti + 1], y_adv, eps, cfg, target=ti, seed=cfg.seed + first)
            artefacts[f"poisons.{name}"] = p["x"][:4]
            artefacts[f"clean.{name}"] = train.x[p["indices"][:4]]
    return {"metrics": metrics, "rows": rows, "seconds": seconds, "targets": [dict(seed=s, index=i, y_true=int(test.y[i]), y_adv=a)
                                                          for s, (i, a) in zip(cfg.targets, tgt)],
            "artefacts": artefacts, "scale": _scale(cfg, train)}


def _scale(cfg, train) -> str:
    p = targeted.budget(len(train.y), cfg.rate)
    return (f"{cfg.dataset} ({len(train.y)} training images, P = {p} poisons = {cfg.rate:.0%}), "
            f"{len(cfg.targets)} targets x {cfg.runs} condensation runs, ipc {cfg.ipc}, {cfg.iterations} DM "
            f"iterations (paper 20,000), batch {cfg.batch_real}/class, ConvNet width {cfg.width} depth "
            f"{cfg.depth}, {cfg.eval_models} evaluation network(s) x {cfg.eval_epochs} epochs; Witches' Brew "
            f"{cfg.ensemble} models (epochs up to {cfg.ensemble_epochs}), {cfg.gm_restarts} restarts x "
            f"{cfg.gm_steps} steps; DM poisoning {cfg.dm_restarts} restarts x {cfg.dm_steps} steps")


def diagnostics(cfg) -> dict:
    """The chapter's checks on the first target: eq. (4)'s cosine on held-out ensemble members, eq. (5) on
    fresh networks, and the poisoned deviation of class ``y_adv``'s mean embedding, before and after crafting.

    Held-out members: ``cfg.heldout`` extra networks pretrained like the ensemble (other seeds), never seen by
    the crafting. Fresh networks: ``cfg.fresh_nets`` ConvNets from seeds the crafting never drew. Control:
    uniformly random perturbations in the same eps ball."""
    torch.set_num_threads(cfg.threads) if cfg.threads else None
    train, test = load_data(cfg)
    s = cfg.targets[0]
    ti, y_adv = choose_target(test.y, train.num_classes, s)
    x_t, stats, eps = test.x[ti:ti + 1], _stats(train), cfg.eps_list[0]
    factory = _factory(train.shape, cfg)
    gm = craft("gm", train, x_t, y_adv, eps, cfg, target=ti, seed=cfg.seed + s)
    dm = craft("dm", train, x_t, y_adv, eps, cfg, target=ti, seed=cfg.seed + s)
    clean = train.x[gm["indices"]]
    g = torch.Generator().manual_seed(cfg.seed + 12345)
    control = targeted.project((2 * torch.rand(clean.shape, generator=g) - 1) * eps, clean, eps) + clean
    # eq. (4) on held-out members
    held = targeted.pretrain_ensemble(train.x, train.y, targeted.stagger_epochs(cfg.heldout, cfg.ensemble_epochs),
                                      factory, stats=stats, seed=cfg.seed + 10_000)
    ens = targeted.Ensemble(held)
    tg = targeted._flat(ens.param_grads(targeted._standardise(x_t, stats), torch.tensor([y_adv]))).detach()
    cos = {}
    for k, xp in (("clean", clean), ("control", control), ("gm", gm["x"]), ("dm", dm["x"])):
        gp = targeted._flat(ens.param_grads(targeted._standardise(xp, stats),
                                            torch.full((len(xp),), y_adv))).detach()
        cos[k] = torch.nn.functional.cosine_similarity(gp, tg, dim=1).tolist()
    # eq. (5) and the class-mean deviation on fresh networks
    xs = train.x[train.y == y_adv]
    dmx = train.x.clone()
    dist = {k: [] for k in ("clean", "control", "gm", "dm")}
    dev = {k: [] for k in ("control", "gm", "dm", "direct")}
    poisons = {"control": control, "gm": gm["x"], "dm": dm["x"], "direct": targeted.direct(x_t, len(clean))}
    dist_t = []
    for j in range(cfg.fresh_nets):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 777_000 + j)
            net = factory().eval().requires_grad_(False)
        with torch.no_grad():
            xt_std = targeted._standardise(x_t, stats)
            for k, xp in (("clean", clean), ("control", control), ("gm", gm["x"]), ("dm", dm["x"])):
                dist[k].append(float(targeted.dm_poison_loss(net, xt_std, targeted._standardise(xp, stats))))
        for k, xp in poisons.items():
            dmx[gm["indices"]] = xp
            d = targeted.feature_deviation(net, xs, dmx[train.y == y_adv], x_t, stats=stats)
            with torch.no_grad():  # chapter 20's eps ||mu_B - mu_D|| and the replaced images' eps ||mu_O - mu_D||
                f = lambda z: net.embed(targeted._standardise(z, stats)).mean(0)  # noqa: E731
                mu_d = f(xs)
                gap, samp = float((f(xp) - mu_d).norm()), float((f(clean) - mu_d).norm())
            dev[k].append(dict(d, gap=gap, sampling=samp))
            dmx[gm["indices"]] = clean
        dist_t.append(dev["dm"][-1]["distance"])
    p = len(gm["indices"])
    class_eps = estimators.class_eps(p, len(xs))
    metrics = {"class_eps": class_eps, "poisons": p}
    for k, v in cos.items():
        metrics[f"cos.{k}"] = float(np.mean(v))
    for k, v in dist.items():
        metrics[f"eq5.{k}"] = float(np.mean(v))
    metrics["eq5.dm_fell_frac"] = float(np.mean([a < b for a, b in zip(dist["dm"], dist["clean"])]))
    for k, v in dev.items():
        metrics[f"dev.{k}"] = float(np.mean([d["deviation"] for d in v]))
        metrics[f"towards.{k}"] = float(np.mean([d["towards"] for d in v]))
        metrics[f"bound.{k}"] = float(np.mean([class_eps * d["gap"] for d in v]))
        metrics[f"sampling.{k}"] = float(np.mean([class_eps * d["sampling"] for d in v]))
        metrics[f"pull.{k}"] = float(np.mean([d["towards"] / (class_eps * d["distance"]) for d in v]))
        metrics[f"pull_slack.{k}"] = float(np.mean([d["sampling"] / d["distance"] for d in v]))
    metrics["distance"] = float(np.mean(dist_t))
    return {"metrics": metrics, "cos": cos, "eq5": dist, "deviation": dev,
            "curves": {"gm": gm["curve"], "dm": dm["curve"]}, "target": dict(index=ti, y_adv=y_adv),
            "scale": _scale(cfg, train) + f"; {cfg.heldout} held-out members, {cfg.fresh_nets} fresh networks"}
