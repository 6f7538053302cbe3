"""Chapter 51, "Purifying unlearnable examples with D-VAE" (Yu et al. 2024, papers/003).

* :func:`vae_vs_jpeg`: Figure 2(a)/(b): rate-constrained VAEs at several KLD targets and JPEG at the paper's
  qualities on one unlearnable set: PSNR of the output against its input, clean test accuracy of a victim
  trained on the output; and the Sec. 3.5 selection of ``kld1``/``kld2`` from the measured PSNRs.
* :func:`dvae_table`: Algorithm 1 on each of chapter 50's unlearnable sets: Table 2's D-VAE column (with JPEG
  beside it on the same images), Table 7's inferences i1-i3 (``x1``, ``x2``, ``x3``; sampled and mean ``z``),
  Table 10's amplitudes of ``p_hat`` against ``p``, Table 1's classifier trained on clean + ``p_hat``.
* :func:`partial_poisoning`: Sec. 5.1-5.2 and appendix D (Tables 8/11 and 9/12): a fraction of the training set is
  unlearnable; detect it with stage 1's ``p_hat``, purify what was flagged; and "increasing UEs": a D-VAE trained
  on a few unlearnable images turns clean ones unlearnable.

The unlearnable sets and the victim are chapter 50's (:func:`poisonbook.experiments.unlearnable.poisoned_training_set`,
``fit_victim``), at the profile ``cfg.ue_profile`` of ``unlearnable-table`` so the crafted poisons are shared.
Metric names: ``<dataset>.<attack>.<defence>.test_acc`` (percent; defences ``dvae`` = ``x3``, ``dvae_mean``,
``dvae_x1``, ``dvae_x2``, ``jpeg``, ``none``), ``<dataset>.<attack>.p_l2`` / ``phat_l2`` / ``mse_p_phat_e4`` /
``psnr_p_phat``, ``<dataset>.<attack>.phat_set.acc_T`` / ``acc_D`` / ``acc_P``, and for Figure 2
``<dataset>.<attack>.vae@<target>.psnr`` / ``.test_acc``, ``<dataset>.<attack>.jpeg@<q>.psnr`` / ``.test_acc``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .. import cache, train
from ..profiles import Config
from ..defend import purification, vae as V
from . import unlearnable as U

__all__ = ["ue_config", "select_targets", "vae_vs_jpeg", "dvae_table", "detection_scores", "partial_poisoning"]


def ue_config(cfg):
    """Chapter 50's configuration whose unlearnable sets and victim this chapter uses (``profiles.get`` resolves
    it into ``cfg.ue`` from ``ue_profile`` and ``ue_overrides``, so the record's configuration holds it)."""
    return Config(cfg.ue)


def _train_kw(cfg):
    return dict(epochs=cfg.vae_epochs, lr=cfg.vae_lr, batch_size=cfg.vae_batch_size, kld_weight=cfg.kld_weight,
                width=cfg.vae_width, latent=cfg.vae_latent)


def _poisoned(attack, dataset, cfg, ucfg):
    s = U.poisoned_training_set(attack, dataset, ucfg)
    n = cfg.n_train or len(s["y"])
    return {k: s[k][:n] for k in ("x", "y", "delta", "clean")}


def _accuracy(x, y, num_classes, ucfg, te):
    return 100.0 * train.evaluate(U.fit_victim(x, y, num_classes, ucfg), te.x, te.y)


def _vae_sweep(attack, dataset, cfg, ucfg) -> dict:
    """Plain rate-constrained VAEs (eq. 3) at each target on one unlearnable set: reconstructions, cached."""
    s = _poisoned(attack, dataset, cfg, ucfg)
    key = dict(attack=attack, dataset=dataset, targets=cfg.targets, seed=cfg.seed, n=len(s["y"]),
               data=cache.fingerprint(s["x"]), **_train_kw(cfg))

    def compute():
        out = {}
        for t in cfg.targets:
            model, hist = V.train_vae(s["x"], kld_target=t, seed=cfg.seed, **_train_kw(cfg))
            out[t] = {"x_hat": V.vae_reconstruct(model, s["x"], seed=cfg.seed), "kld": hist["kld"][-1],
                      "seconds": hist["seconds"]}
        return out
    return cache.cached(f"dvae-sweep-{attack}-{dataset}", key, compute)


def select_targets(psnr_by_target: dict, stage1=(20.0, 22.0), stage2=(28.0, 30.0)) -> tuple[float, float]:
    """Sec. 3.5: ``kld1`` with output PSNR in ``stage1`` (20-22 dB), ``kld2`` in ``stage2`` (28-30 dB).

    Among the measured targets, the one whose PSNR is nearest the middle of each band (the paper tries a few
    targets and keeps one inside the band); ``kld1`` is below the largest target and ``kld2`` above ``kld1``.
    """
    ts = sorted(psnr_by_target)

    def nearest(band, pool):
        mid = sum(band) / 2
        return min(pool, key=lambda t: abs(psnr_by_target[t] - mid))
    k1 = nearest(stage1, ts[:-1] or ts)
    k2 = nearest(stage2, [t for t in ts if t > k1] or ts[-1:])
    return k1, k2


def vae_vs_jpeg(cfg) -> dict:
    """Figure 2: PSNR and clean test accuracy for the VAE at each KLD target and for JPEG at each quality."""
    ucfg = ue_config(cfg)
    metrics, seconds = {}, {}
    dataset, attack = cfg.dataset, cfg.fig2_attack
    tr, te = U.load_data(dataset, ucfg)
    s = _poisoned(attack, dataset, cfg, ucfg)
    sweep = _vae_sweep(attack, dataset, cfg, ucfg)
    pre = f"{dataset}.{attack}"
    metrics[f"{pre}.poison.psnr"] = V.psnr(s["x"], s["clean"])
    metrics[f"{pre}.none.test_acc"] = _accuracy(s["x"], s["y"], tr.num_classes, ucfg, te)
    for t in cfg.targets:
        t0 = time.perf_counter()
        metrics[f"{pre}.vae@{t}.psnr"] = V.psnr(sweep[t]["x_hat"], s["x"])
        metrics[f"{pre}.vae@{t}.psnr_clean"] = V.psnr(sweep[t]["x_hat"], s["clean"])
        metrics[f"{pre}.vae@{t}.kld"] = sweep[t]["kld"]
        metrics[f"{pre}.vae@{t}.test_acc"] = _accuracy(sweep[t]["x_hat"], s["y"], tr.num_classes, ucfg, te)
        seconds[f"vae@{t}"] = sweep[t]["seconds"] + time.perf_counter() - t0
    for q in cfg.jpeg_qualities:
        t0 = time.perf_counter()
        xj = purification.jpeg(s["x"], q)
        metrics[f"{pre}.jpeg@{q}.psnr"] = V.psnr(xj, s["x"])
        metrics[f"{pre}.jpeg@{q}.test_acc"] = _accuracy(xj, s["y"], tr.num_classes, ucfg, te)
        seconds[f"jpeg@{q}"] = time.perf_counter() - t0
    k1, k2 = select_targets({t: metrics[f"{pre}.vae@{t}.psnr"] for t in cfg.targets})
    metrics["kld1_selected"], metrics["kld2_selected"] = k1, k2
    best = cfg.targets[int(np.argmax([metrics[f"{pre}.vae@{t}.test_acc"] for t in cfg.targets]))]
    arts = {"images": torch.stack([s["clean"][:6], s["x"][:6], *[sweep[t]["x_hat"][:6] for t in cfg.targets]])}
    return {"metrics": metrics, "artefacts": arts, "seconds": seconds, "best_target": best,
            "scale": _scale(cfg, ucfg, len(s["y"]), [attack])}


def _purified(attack, dataset, cfg, ucfg, kld1, kld2):
    s = _poisoned(attack, dataset, cfg, ucfg)
    key = dict(attack=attack, dataset=dataset, kld1=kld1, kld2=kld2, seed=cfg.seed, n=len(s["y"]),
               extra_term=cfg.extra_term, embed=cfg.embed, data=cache.fingerprint(s["x"], s["y"]), **_train_kw(cfg))

    def compute():
        t0 = time.perf_counter()
        r = V.dvae_purify(s["x"], s["y"], int(s["y"].max()) + 1, kld1=kld1, kld2=kld2, seed=cfg.seed,
                          extra_term=cfg.extra_term, embed=cfg.embed, **_train_kw(cfg))
        return {**{k: getattr(r, k) for k in ("x1", "x2", "x3", "x3_mean", "p0", "p1")},
                "seconds": time.perf_counter() - t0}
    return s, cache.cached(f"dvae-purified-{attack}-{dataset}", key, compute)


def _l2(t):
    return t.flatten(1).norm(dim=1).mean().item()


def _targets(cfg, ucfg) -> tuple[float, float]:
    """``(kld1, kld2)``: the profile's, or chosen by :func:`select_targets` from the Figure 2 sweep's PSNRs."""
    if cfg.kld1 is not None:
        return cfg.kld1, cfg.kld2
    sweep = _vae_sweep(cfg.fig2_attack, cfg.dataset, cfg, ucfg)
    s0 = _poisoned(cfg.fig2_attack, cfg.dataset, cfg, ucfg)
    return select_targets({t: V.psnr(sweep[t]["x_hat"], s0["x"]) for t in cfg.targets})


def dvae_table(cfg) -> dict:
    """Tables 1, 2, 7, 10 on each attack of ``cfg.attacks`` (targets chosen by :func:`select_targets`)."""
    ucfg = ue_config(cfg)
    dataset = cfg.dataset
    tr, te = U.load_data(dataset, ucfg)
    s0 = _poisoned(cfg.fig2_attack, dataset, cfg, ucfg)
    kld1, kld2 = _targets(cfg, ucfg)
    metrics, seconds, images = {"kld1": kld1, "kld2": kld2}, {}, {}
    n_cls = tr.num_classes
    clean = s0["clean"]
    metrics[f"{dataset}.clean.none.test_acc"] = _accuracy(clean, s0["y"], n_cls, ucfg, te)
    for attack in cfg.attacks:
        s, r = _purified(attack, dataset, cfg, ucfg, kld1, kld2)
        pre = f"{dataset}.{attack}"
        seconds[f"{attack}.purify"] = r["seconds"]
        t0 = time.perf_counter()
        for name, xs in (("none", s["x"]), ("jpeg", purification.jpeg(s["x"], 10)), ("dvae_x1", r["x1"]),
                         ("dvae_x2", r["x2"]), ("dvae", r["x3"]), ("dvae_mean", r["x3_mean"])):
            if name in cfg.defences:
                metrics[f"{pre}.{name}.test_acc"] = _accuracy(xs, s["y"], n_cls, ucfg, te)
        for name, xs in (("poison", s["x"]), ("x1", r["x1"]), ("x2", r["x2"]), ("x3", r["x3"])):
            metrics[f"{pre}.{name}.psnr_clean"] = V.psnr(xs, s["clean"])
        p, ph = s["x"] - s["clean"], r["p0"]  # Table 10: the realised perturbation against stage 1's estimate
        metrics[f"{pre}.p_l2"], metrics[f"{pre}.phat_l2"] = _l2(p), _l2(ph)
        mse = torch.mean((p - ph) ** 2).item()
        metrics[f"{pre}.mse_p_phat_e4"] = 1e4 * mse
        metrics[f"{pre}.psnr_p_phat"] = 10 * np.log10(1 / mse)
        metrics[f"{pre}.l2_to_clean.poison"] = _l2(s["x"] - s["clean"])
        metrics[f"{pre}.l2_to_clean.x1"] = _l2(r["x1"] - s["clean"])
        if cfg.table1:  # Table 1: P_hat = T + p_hat; accuracy on T (clean train), D (clean test), P (poisoned train)
            x_hat_set = (s["clean"] + ph).clamp(0, 1)
            net = U.fit_victim(x_hat_set, s["y"], n_cls, ucfg)
            metrics[f"{pre}.phat_set.acc_T"] = 100.0 * train.evaluate(net, s["clean"], s["y"])
            metrics[f"{pre}.phat_set.acc_D"] = 100.0 * train.evaluate(net, te.x, te.y)
            metrics[f"{pre}.phat_set.acc_P"] = 100.0 * train.evaluate(net, s["x"], s["y"])
        seconds[f"{attack}.victims"] = time.perf_counter() - t0
        images[f"images_{attack}"] = torch.stack([s["clean"][:4], s["x"][:4], r["x1"][:4], r["x3"][:4],
                                                  (s["x"] - s["clean"])[:4], r["p0"][:4]])
    return {"metrics": metrics, "artefacts": images, "seconds": seconds, "n_test": len(te.y),
            "scale": _scale(cfg, ucfg, len(s0["y"]), cfg.attacks)}


def detection_scores(flags: torch.Tensor, truth: torch.Tensor) -> dict:
    """Accuracy, recall, precision and F1 of the flags against the true unlearnable mask (Table 8's columns)."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    f, t = flags.numpy().astype(bool), truth.numpy().astype(bool)
    return {"acc": accuracy_score(t, f), "recall": recall_score(t, f, zero_division=0),
            "precision": precision_score(t, f, zero_division=0), "f1": f1_score(t, f, zero_division=0)}


def _mixed(s, ratio, seed):
    """The training set with a random ``ratio`` of its images unlearnable (the rest clean), and the true mask."""
    n = len(s["y"])
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:round(ratio * n)]
    truth = torch.zeros(n, dtype=torch.bool)
    truth[idx] = True
    return torch.where(truth[:, None, None, None], s["x"], s["clean"]), truth


def _partial_cell(attack, ratio, cfg, ucfg, kld1, kld2):
    """One (attack, ratio) of Tables 8/9: detect with stage 1, purify the flagged images (Algorithm 1). Cached."""
    s = _poisoned(attack, cfg.dataset, cfg, ucfg)
    x, truth = _mixed(s, ratio, cfg.seed)
    y, n_cls = s["y"], int(s["y"].max()) + 1
    key = dict(attack=attack, ratio=ratio, dataset=cfg.dataset, kld1=kld1, kld2=kld2, seed=cfg.seed,
               data=cache.fingerprint(x, y), embed=cfg.embed, extra_term=cfg.extra_term, **_train_kw(cfg))

    def compute():
        m1, _ = V.train_dvae(x, y, n_cls, kld_target=kld1, seed=cfg.seed, extra_term=cfg.extra_term,
                             embed=cfg.embed, **_train_kw(cfg))
        _, p0 = V.dvae_infer(m1, x, y, seed=cfg.seed)
        # Sec. 5.1: a model trained on P_hat0 = x + p_hat0 learns the shortcut; it classifies the unlearnable
        # images (which carry the real shortcut) correctly and the clean ones worse. Flag = correctly classified.
        flags = train.predict(U.fit_victim((x + p0).clamp(0, 1), y, n_cls, ucfg), x) == y
        purified = x.clone()
        if flags.sum() > 0:  # detection-purification: Algorithm 1 on the flagged images only
            r = V.dvae_purify(x[flags], y[flags], n_cls, kld1=kld1, kld2=kld2, seed=cfg.seed,
                              extra_term=cfg.extra_term, embed=cfg.embed, **_train_kw(cfg))
            purified[flags] = r.x3
        return {"x": x, "truth": truth, "flags": flags, "purified": purified}
    return cache.cached(f"dvae-partial-{attack}-{cfg.dataset}", key, compute)


def _increase_cell(attack, ratio, cfg, ucfg, kld1):
    """Sec. 5.2 (Tables 8/11, right): a D-VAE on the ``ratio`` of unlearnable images P(0) infers p_hat on the
    clean rest T(1); P = P(0) + (T(1) + p_hat(1)). Returns that set (cached)."""
    s = _poisoned(attack, cfg.dataset, cfg, ucfg)
    _, own = _mixed(s, ratio, cfg.seed)
    y, n_cls = s["y"], int(s["y"].max()) + 1
    key = dict(attack=attack, ratio=ratio, dataset=cfg.dataset, kld1=kld1, seed=cfg.seed,
               data=cache.fingerprint(s["x"], y), embed=cfg.embed, extra_term=cfg.extra_term, **_train_kw(cfg))

    def compute():
        m, _ = V.train_dvae(s["x"][own], y[own], n_cls, kld_target=kld1, seed=cfg.seed, extra_term=cfg.extra_term,
                            embed=cfg.embed, **_train_kw(cfg))
        _, p1 = V.dvae_infer(m, s["clean"][~own], y[~own], seed=cfg.seed)
        x = s["x"].clone()
        x[~own] = (s["clean"][~own] + p1).clamp(0, 1)
        return {"x": x, "own": own}
    return cache.cached(f"dvae-increase-{attack}-{cfg.dataset}", key, compute)


def partial_poisoning(cfg) -> dict:
    """Tables 8/11 (detection; increasing UEs) and 9/12 (accuracy after detection-purification, JPEG beside it).

    Metric names: ``<dataset>.<attack>.r<ratio>.detect.{acc,recall,precision,f1}``, ``...r<ratio>.<defence>.test_acc``
    for defences ``none`` (the partially poisoned set), ``jpeg`` (quality 10 on every image) and ``dvae``
    (detection, then Algorithm 1 on the flagged images), and ``<dataset>.<attack>.inc<ratio>.test_acc``.
    """
    ucfg = ue_config(cfg)
    tr, te = U.load_data(cfg.dataset, ucfg)
    kld1, kld2 = _targets(cfg, ucfg)
    metrics, seconds = {"kld1": kld1, "kld2": kld2}, {}
    for attack in cfg.partial_attacks:
        y = _poisoned(attack, cfg.dataset, cfg, ucfg)["y"]
        for ratio in cfg.partial_ratios:
            t0 = time.perf_counter()
            c = _partial_cell(attack, ratio, cfg, ucfg, kld1, kld2)
            pre = f"{cfg.dataset}.{attack}.r{ratio}"
            metrics.update({f"{pre}.detect.{k}": v for k, v in detection_scores(c["flags"], c["truth"]).items()})
            for name, xs in (("none", c["x"]), ("jpeg", purification.jpeg(c["x"], 10)), ("dvae", c["purified"])):
                metrics[f"{pre}.{name}.test_acc"] = _accuracy(xs, y, tr.num_classes, ucfg, te)
            seconds[f"{attack}.r{ratio}"] = time.perf_counter() - t0
        for ratio in cfg.increase_ratios:
            t0 = time.perf_counter()
            c = _increase_cell(attack, ratio, cfg, ucfg, kld1)
            pre = f"{cfg.dataset}.{attack}.inc{ratio}"
            metrics[f"{pre}.test_acc"] = _accuracy(c["x"], y, tr.num_classes, ucfg, te)
            metrics[f"{pre}.n_unlearnable"] = int(c["own"].sum())
            seconds[f"{attack}.inc{ratio}"] = time.perf_counter() - t0
    return {"metrics": metrics, "seconds": seconds, "n_test": len(te.y),
            "scale": _scale(cfg, ucfg, len(y), cfg.partial_attacks)}


def _scale(cfg, ucfg, n, attacks) -> str:
    return (f"{n:,} unlearnable training images of {cfg.dataset} ({', '.join(attacks)}; chapter 50's {cfg.ue_profile} "
            f"poisons), {ucfg.test_size:,} test images; VAEs of width {cfg.vae_width} (paper 64) with {cfg.vae_latent} "
            f"latent channels (paper 256), {cfg.vae_epochs} epochs per stage (paper 60); victim {ucfg.model} "
            f"(width {ucfg.width}), {ucfg.epochs} epochs (paper: ResNet-18, 60)")
