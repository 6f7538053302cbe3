"""Chapter 50, "Unlearnable examples": the D-VAE paper's attacks (Yu et al. 2024) and the simple defences.

* :func:`poisoned_training_set` ``(attack, dataset, cfg)``: the (cached) unlearnable training set of
  one attack; chapter 51 (D-VAE) purifies these.
* :func:`attack_table`: clean test accuracy of a victim trained on each unlearnable set, without a
  defence, with adversarial training and with the three ISS compressions (Table 2's attack-by-defence
  rows without D-VAE; Table 6's mean performance drop), plus the norms of every perturbation, a
  linear probe on the perturbations alone, and example images.

Metric names: ``<dataset>.<attack>.<defence>.test_acc`` (percent), ``<dataset>.<attack>.train_acc``
(percent, the victim without defence on its own unlearnable training set), ``<dataset>.<attack>.probe_acc``
(percent), ``<dataset>.<attack>.norm_max`` / ``norm_min``, ``<dataset>.mean_drop.<defence>`` (points).
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import torch

from .. import augment, cache, checks, data, models, train
from ..defend import purification
from ..defend.training import adversarial_fit
from ..poison import unlearnable as ue

__all__ = ["ATTACKS", "DEFENCES", "load_data", "poisoned_training_set", "attack_table", "victim",
           "fit_victim", "accuracy_interval", "significant_drop", "accuracy_frame", "verdicts"]

ATTACKS = ("em", "rem", "tap", "lsp", "ar", "ops")
DEFENCES = ("none", "at", "jpeg", "grayscale", "bdr")


def load_data(dataset: str, cfg) -> tuple[data.Data, data.Data]:
    """The training and test subsets of ``dataset`` at the profile's sizes (stratified, seeded)."""
    return _subsets(dataset, cfg.train_size, cfg.test_size, cfg.seed)


@functools.lru_cache(maxsize=4)
def _subsets(dataset, train_size, test_size, seed):  # colourising the full set takes seconds: do it once
    def cut(d, n):
        return data.subset(d, n, seed=seed) if n else d
    return cut(data.load(dataset, "train+val"), train_size), cut(data.load(dataset, "test"), test_size)


def victim(shape, num_classes: int, cfg) -> torch.nn.Module:
    """A fresh ``cfg.model`` (ConvNet at the cpu scale; the paper's ResNet-18), seeded by ``cfg.seed``."""
    train.seed_everything(cfg.seed)
    if cfg.model == "convnet":
        return models.ConvNet(shape[0], num_classes, shape[1], width=cfg.width, depth=cfg.depth)
    return models.make(cfg.model, shape, num_classes)


def _augment_fn(cfg):
    if not cfg.victim_augment:
        return None
    return lambda xb, g: augment.augment(xb, cfg.victim_augment, g)


def fit_victim(x, y, num_classes: int, cfg, *, epochs: int | None = None, adversarial: bool = False):
    """Train :func:`victim` with the paper's recipe (SGD, momentum 0.9, wd 5e-4, cosine), reduced epochs."""
    net = victim(tuple(x.shape[1:]), num_classes, cfg)
    kw = dict(lr=cfg.lr, batch_size=cfg.batch_size, momentum=0.9, weight_decay=5e-4, seed=cfg.seed)
    if adversarial:  # PGD adversarial training (Madry et al. 2018), l_inf 8/255 (D-VAE appendix E.2)
        # Part IV's loop: step schedule (x0.1 at half), no crop/flip; the paper's AT uses its usual recipe.
        adversarial_fit(net, x, y, eps=cfg.at_eps, alpha=cfg.at_alpha, steps=cfg.at_steps, norm="linf",
                        epochs=cfg.at_epochs, **kw)
    else:
        train.fit(net, x, y, epochs=cfg.epochs if epochs is None else epochs, schedule="cosine",
                  augment=_augment_fn(cfg), **kw)
    return net.eval()


def _craft(attack: str, x, y, num_classes: int, cfg) -> torch.Tensor:
    shape = tuple(x.shape[1:])
    if attack == "lsp":
        eps = ue.lsp_code_norm(shape) if cfg.lsp_norm == "code" else float(cfg.lsp_norm)
        return ue.lsp(y, num_classes, shape, eps=eps, seed=cfg.seed)
    if attack == "ar":
        return ue.ar(y, num_classes, shape, eps=cfg.ar_norm, seed=cfg.seed)
    if attack == "ops":
        return ue.ops(x, y, num_classes)
    if attack == "tap":  # against a model trained on the clean data
        return ue.tap(fit_victim(x, y, num_classes, cfg), x, y, num_classes, eps=cfg.eps, alpha=cfg.tap_alpha,
                      steps=cfg.tap_steps, restarts=cfg.tap_restarts, seed=cfg.seed)
    surrogate = victim(shape, num_classes, cfg)
    if attack in ("em", "em-classwise"):
        return ue.em(surrogate, x, y, num_classes, eps=cfg.eps, steps=cfg.em_steps,
                     train_steps=cfg.em_train_steps, classwise=attack == "em-classwise",
                     max_passes=cfg.em_max_passes, lr=cfg.surrogate_lr, seed=cfg.seed)
    return ue.rem(surrogate, x, y, num_classes, eps=cfg.eps, steps=cfg.rem_steps, samples=cfg.rem_samples,
                  adv_steps=cfg.rem_adv_steps, train_steps=cfg.em_train_steps, max_passes=cfg.rem_max_passes,
                  lr=cfg.surrogate_lr, seed=cfg.seed)


_CRAFT_KEYS = ("model", "train_size", "seed", "width", "depth", "eps", "lr", "batch_size", "epochs",
               "victim_augment", "surrogate_lr", "em_steps", "em_train_steps", "em_max_passes", "rem_steps",
               "rem_samples", "rem_adv_steps", "rem_max_passes", "tap_alpha", "tap_steps", "tap_restarts",
               "lsp_norm", "ar_norm")


def poisoned_training_set(attack: str, dataset: str, cfg) -> dict:
    """The unlearnable training set of ``attack`` on ``dataset`` at ``cfg``'s scale, cached.

    Returns ``{"x": clip(x + delta), "y", "delta", "clean": x, "seconds": crafting time}``. The
    cache key holds the attack, the dataset and every setting the crafting reads (and, through
    :func:`poisonbook.cache.config_hash`, the library source).
    """
    checks.choice(attack, "attack", tuple(ue.ATTACK_NORMS), where="poisoned_training_set")
    checks.choice(dataset, "dataset", data.DATASETS, where="poisoned_training_set")
    tr, _ = load_data(dataset, cfg)
    key = {"attack": attack, "dataset": dataset, **{k: cfg[k] for k in _CRAFT_KEYS}}

    def compute():
        t0, c0 = time.perf_counter(), time.process_time()
        delta = _craft(attack, tr.x, tr.y, tr.num_classes, cfg)
        return {"delta": delta, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}

    out = cache.cached(f"unlearnable-{attack}-{dataset}", key, compute)
    return {"x": ue.apply_perturbation(tr.x, out["delta"]), "y": tr.y, "delta": out["delta"], "clean": tr.x,
            "seconds": out["seconds"], "cpu_seconds": out["cpu_seconds"]}


def _probe_accuracy(delta: torch.Tensor, y: torch.Tensor) -> float:
    """Held-out accuracy (%) of a linear classifier fitted to the perturbations alone (the shortcut).

    Fitted on the perturbations of the first half of the images, scored on the second half: with more
    dimensions than images a linear model fits *any* labels, so training accuracy would prove nothing.
    """
    from sklearn.linear_model import LogisticRegression

    z = delta.flatten(1).numpy().astype(np.float64)
    z = z / max(float(np.abs(z).max()), 1e-12)
    yn, half = y.numpy(), len(y) // 2
    clf = LogisticRegression(max_iter=500, C=10.0).fit(z[:half], yn[:half])
    return 100.0 * clf.score(z[half:], yn[half:])


def accuracy_interval(acc_percent: float, n: int) -> float:
    """Half-width (points) of the 95% normal-approximation binomial interval of an accuracy on n images."""
    p = acc_percent / 100
    return 100 * 1.96 * math.sqrt(max(p * (1 - p), 1e-12) / n)


def significant_drop(a: float, b: float, n: int) -> bool:
    """Whether accuracy ``a`` exceeds ``b`` (percent, same ``n`` test images) beyond the 95% interval."""
    return a - b > math.hypot(accuracy_interval(a, n), accuracy_interval(b, n))


def _defend(defence: str, x: torch.Tensor) -> torch.Tensor:
    if defence == "grayscale" and x.shape[1] == 1:
        return x  # already grey
    return purification.iss(x, defence) if defence in purification.ISS else x


def attack_table(cfg) -> dict:
    """Clean test accuracy of victims trained on each unlearnable set, by defence (D-VAE Tables 2, 6)."""
    metrics, seconds, cpu_seconds, images = {}, {}, {}, {}
    for dataset in cfg.datasets:
        tr, te = load_data(dataset, cfg)
        sets = {"clean": {"x": tr.x, "y": tr.y}}
        g = torch.Generator().manual_seed(cfg.seed)
        control = torch.sign(torch.randn(tr.x.shape, generator=g)) * cfg.eps
        metrics[f"{dataset}.random.probe_acc"] = _probe_accuracy(control, tr.y)  # no shortcut: chance
        for attack in cfg.attacks:
            sets[attack] = poisoned_training_set(attack, dataset, cfg)
            d = sets[attack]["delta"]
            norms = ue.perturbation_norms(d, ue.ATTACK_NORMS[attack]).float()
            metrics[f"{dataset}.{attack}.norm_max"] = float(norms.max())
            metrics[f"{dataset}.{attack}.norm_min"] = float(norms.min())
            metrics[f"{dataset}.{attack}.probe_acc"] = _probe_accuracy(d, tr.y)
            seconds[f"{dataset}.{attack}.craft"] = sets[attack]["seconds"]
            cpu_seconds[f"{dataset}.{attack}.craft"] = sets[attack]["cpu_seconds"]
            if dataset == cfg.datasets[0]:
                images[attack] = torch.stack([sets[attack]["clean"][:4], d[:4], sets[attack]["x"][:4]])
        for name, s in sets.items():
            for defence in cfg.defences:
                if defence == "grayscale" and tr.x.shape[1] == 1:
                    continue
                t0, c0 = time.perf_counter(), time.process_time()
                net = fit_victim(_defend(defence, s["x"]), s["y"], tr.num_classes, cfg,
                                 adversarial=defence == "at")
                metrics[f"{dataset}.{name}.{defence}.test_acc"] = 100.0 * train.evaluate(net, te.x, te.y)
                if defence == "none":
                    metrics[f"{dataset}.{name}.train_acc"] = 100.0 * train.evaluate(net, s["x"], s["y"])
                seconds[f"{dataset}.{name}.{defence}"] = time.perf_counter() - t0
                cpu_seconds[f"{dataset}.{name}.{defence}"] = time.process_time() - c0
        clean = metrics[f"{dataset}.clean.none.test_acc"]
        for defence in cfg.defences:
            accs = [metrics.get(f"{dataset}.{a}.{defence}.test_acc") for a in cfg.attacks]
            if accs and None not in accs:
                metrics[f"{dataset}.mean_drop.{defence}"] = clean - float(np.mean(accs))
    scale = (f"{cfg.train_size:,} training and {cfg.test_size:,} test images of {', '.join(cfg.datasets)}; "
             f"{cfg.model} (width {cfg.width}, depth {cfg.depth}), {cfg.epochs} epochs ({cfg.at_epochs} with "
             f"adversarial training, {cfg.at_steps} PGD steps); EM {cfg.em_max_passes} passes at most, "
             f"REM {cfg.rem_max_passes} "
             f"passes with {cfg.rem_samples} transformations and {cfg.rem_adv_steps} adversary steps, "
             f"TAP {cfg.tap_steps} steps")
    arts = {f"images_{a}": v for a, v in images.items()}
    # Wall seconds depend on the machine's load; process CPU seconds (all threads) do not, and on an idle
    # 2-core machine the wall time is between half of them and all of them.
    return {"metrics": metrics, "artefacts": arts, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "scale": scale}


def accuracy_frame(metrics: dict, dataset: str, attacks, defences, n: int):
    """Rows clean + attacks, columns defences: ``acc ± 95% half-width`` strings (a dash where not run)."""
    import pandas as pd

    from .tables import DASH

    def cell(a, d):
        v = metrics.get(f"{dataset}.{a}.{d}.test_acc")
        return DASH if v is None else f"{v:.1f} ± {accuracy_interval(v, n):.1f}"
    return pd.DataFrame({d: {a: cell(a, d) for a in ["clean", *attacks]} for d in defences})


def verdicts(metrics: dict, dataset: str, attacks, defences, n: int) -> dict:
    """Which attacks lower clean accuracy significantly, and which defences then raise it significantly."""
    clean = metrics[f"{dataset}.clean.none.test_acc"]
    effective = [a for a in attacks if significant_drop(clean, metrics[f"{dataset}.{a}.none.test_acc"], n)]
    def acc(a, d):
        return metrics.get(f"{dataset}.{a}.{d}.test_acc")

    restored = {a: [d for d in defences if d != "none" and acc(a, d) is not None
                    and significant_drop(acc(a, d), acc(a, "none"), n)] for a in effective}
    ineffective = [a for a in attacks if a not in effective]
    return {"effective": effective, "ineffective": ineffective, "restored": restored}
