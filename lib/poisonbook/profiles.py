"""The settings of every experiment in every profile, in one place.

A chapter asks ``cfg = profiles.get("tour", PROFILE)`` and reads ``cfg.epochs`` etc.; papermill's
``-p PROFILE cpu`` is the only switch. Profiles:

* ``ci``: proves the chapter runs (small offline subsets; < 90 s per notebook on 2 CPU cores).
* ``cpu``: honest reduced-scale reproduction on real offline data (< 60 min per notebook).
* ``paper``: the papers' own settings (GPU; downloads MNIST, CIFAR, TinyImageNet).

Each experiment maps ``"common"`` (shared settings) and every profile to a dict; all three
profiles must define the same keys, so a run record's configuration is always complete.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["PROFILES", "EXPERIMENTS", "Config", "get"]

PROFILES = ("ci", "cpu", "paper")


class Config(dict):
    """A plain dict of settings that also reads as attributes (``cfg.epochs``)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"no setting {key!r}; settings are {', '.join(sorted(self))}") from None


EXPERIMENTS: dict[str, dict[str, dict[str, Any]]] = {
    # Chapter 00, "How to use this book": a ConvNet trained on a small real subset.
    "tour": {
        "common": dict(model="convnet", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=256,
                       schedule="step", checkpoint_every=1),
        "ci": dict(dataset="mnist5k", train_size=1000, test_size=500, epochs=6, width=32),
        "cpu": dict(dataset="fashion-mnist", train_size=10000, test_size=10000, epochs=20, width=128),
        "paper": dict(dataset="fashion-mnist", train_size=None, test_size=None, epochs=50, width=128),
    },
}

# Chapter 30, "When can a model be poisoned?" (Lu, Kamath & Yu 2023, Figures 1, 2, 5, 6, Table 8).
# GC learning rates: the book's one rule lr = gc_eta n / curvature (experiments.poisonability.gc_step, derived in the
# chapter), curvature eps_d ||w||^2 for the binary linear targets and eps_d for least squares; the paper's constant 0.5
# is tuned for 42,000 MNIST images. The binary values reproduce the lr of the earlier per-experiment rules at the cpu sizes (OR 50/(eps ||w||^2)
# at n = 200, Gaussian 12,000/(eps ||w||^2) at n = 800, MNIST-17 2,500/(eps ||w||^2) at n = 800, least squares
# 0.5/eps at n = 200); multi-class LR (Table 8) and the small Gaussian MLP take chapter 31's LR eta (0.1).
_OR_EPS = [0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 1.5, 2.5, 4.0, 6.0, 10.0]
EXPERIMENTS.update({
    "poisonability-or": {
        "common": dict(copies=50, noise=0.05, loss="logistic", gc_eta=0.25, gc_momentum=0.9, retrain_lr=1.0,
                       check_target=(-0.5, -0.5), check_lr=100.0, check_epochs=1000, grid_lo=-2.0,
                       explorer_factors=(0.5, 1.5, 3.0)),
        "ci": dict(grid_size=21, targets=[(-0.5, -0.5), (-1.0, -1.0)], eps_list=[0.3, 1.0, 2.5, 6.0],
                   gc_epochs=300, retrain_epochs=1000, random_candidates=500, fw_iters=200),
        "cpu": dict(grid_size=81, targets=[(-0.5, -0.5), (-1.0, -0.25), (-1.0, -1.0)], eps_list=_OR_EPS,
                    gc_epochs=1000, retrain_epochs=3000, random_candidates=5000, fw_iters=1000),
        "paper": dict(grid_size=81, targets=[(-0.5, -0.5), (-1.0, -0.25), (-1.0, -1.0)], eps_list=_OR_EPS,
                      gc_epochs=1000, retrain_epochs=3000, random_candidates=5000, fw_iters=1000),
    },
    "poisonability-gauss": {
        "common": dict(n_samples=1000, n_features=10, train_fraction=0.8, eps_w=0.5, clean_epochs=200, clean_lr=1.0,
                       gc_eta=15.0, gc_momentum=0.9, retrain_epochs=500, retrain_lr=1.0, mlp_gc_eta=0.1),
        "ci": dict(eps_list=[0.1, 1.0, 3.0], gc_epochs=100, mlp_gc_epochs=50),
        "cpu": dict(eps_list=[0.03, 0.1, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0], gc_epochs=1000, mlp_gc_epochs=500),
        "paper": dict(eps_list=[0.03, 0.1, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0], gc_epochs=1000, mlp_gc_epochs=500),
    },
    "poisonability-mnist17": {
        "common": dict(eps_w=0.4, clean_epochs=200, clean_lr=1.0, gc_eta=3.125, gc_momentum=0.9,
                       retrain_epochs=300, retrain_lr=1.0),
        "ci": dict(dataset="mnist5k", train_size=100, eps_list=[0.1, 1.0], gc_epochs=50),
        "cpu": dict(dataset="mnist5k", train_size=None, eps_list=[0.03, 0.1, 0.3, 1.0, 3.0], gc_epochs=1000),
        "paper": dict(dataset="mnist", train_size=None, eps_list=[0.03, 0.1, 0.3, 1.0, 3.0], gc_epochs=1000),
    },
    "poisonability-least-squares": {
        "common": dict(n=200, target=(-1.0, 0.5), eps_list=[0.05, 0.1, 0.2, 0.5, 1.0], gc_eta=0.0025, gm_lr=0.05),
        "ci": dict(gc_epochs=1000, gm_steps=200),
        "cpu": dict(gc_epochs=1000, gm_steps=1000),
        "paper": dict(gc_epochs=1000, gm_steps=1000),
    },
    "poisonability-scaling": {
        "common": dict(eps_w=0.15, eps_list=[0.03, 0.1, 1.0], clean_epochs=300, clean_lr=0.5, gc_eta=0.1,
                       retrain_epochs=100, retrain_lr=0.1),
        "ci": dict(dataset="mnist5k", train_size=150, test_size=150, gc_epochs=5),
        "cpu": dict(dataset="mnist5k", train_size=None, test_size=None, gc_epochs=1000),
        "paper": dict(dataset="mnist", train_size=None, test_size=None, gc_epochs=1000),
    },
})


# Chapter 31, "Gradient Canceling against neural networks" (Lu, Kamath & Yu 2023, Tables 1-5, 9, 10, Figures 3, 7).
# A setting is one dataset + model. gc_eta: the book's GC rule lr = gc_eta n (experiments.poisonability.gc_step, chapter
# 30's derivation), one eta per model in every book profile, chosen on the GC objective alone (drop of ||g(chi)|| in
# 30 epochs at eps_d = 1, training data only): LR 0.1 (lr 100 at n = 1,000, as before); the paper's NN 0.03 (lr
# 10/30/100: ||g|| 3.98 -> 1.71/1.56/4.21 on MNIST-5k, 100 diverged; Fashion 2.66/2.41/2.29); the CNN 0.01 (against
# the target of the stable recipe, 8 epochs only, lr 10/20/50: ||g|| 2.81 -> 1.59/1.73/2.35).
# lr = eta n / eps_d diverged at eps_d = 0.03 (MNIST-5k LR: ||g|| 4 -> 281); the paper profile keeps the
# paper's constant gc_lr 0.5 (gc_eta None). mlp is the paper's NN (gc_networks.PaperNN, 784-h-h-10; cpu h = 128).
# victim: the setting's own optimiser (train.fit's lr/momentum/schedule) over the shared plain SGD at victim_lr; the
# CNN's plain SGD at 0.1 was unstable at 1,000 images (adding 30 clean copies moved test accuracy by 25 points, where
# SGD 0.05 with momentum 0.9 and a cosine schedule moved it by at most 1 at the same cost). tau_paper: the paper's
# Table 2 tau(2) of the model, used to pick the GradPC target (largest validation drop with tau(2) <= tau_paper).
def _gc31(name, dataset, model, n_train, epochs, gc_eta, gc_epochs, parts, *, hidden=None, n_val=400, n_test=None,
          gc_batch=None, tau_paper=1.0, sever_params=None, influence=True, fig3_eps_w=(), gc_lr=None, victim=None):
    return dict(name=name, dataset=dataset, model=model, hidden=hidden, n_train=n_train, n_val=n_val, n_test=n_test,
                epochs=epochs, gc_eta=gc_eta, gc_lr=gc_lr, gc_epochs=gc_epochs, gc_batch=gc_batch, tau_paper=tau_paper,
                parts=parts, sever_params=sever_params, influence=influence, fig3_eps_w=list(fig3_eps_w), victim=victim)


def _reach31(dataset, n):  # the reachable-target experiment: LR, L2 weight decay, GC with Adam, L-BFGS victims
    return dict(dataset=dataset, n=n, weight_decay=0.01, gc_epochs=1000, adam_lr=0.03, lbfgs_iters=1000)


_EPSW31 = [0.01, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2, 0.5, 1.0]
_ALL31 = ["pc", "gc", "tgda", "gm", "fig3", "defenses", "table9", "images"]
_TAU31 = {"lr": 1.15, "mlp": 2.48, "cnn": 0.98, "resnet18": 1.29, "resnet34": 1.08}
_CNN_VICTIM = dict(lr=0.05, momentum=0.9, schedule="cosine")
_LAST31 = {"mlp": ["out.weight", "out.bias"], "cnn": ["fc2.weight", "fc2.bias"]}
EXPERIMENTS.update({
    "gc-networks": {
        "common": dict(eps_d_list=[0.03, 0.1, 1.0],
                       gradpc_step=0.1, gradpc_batch=64, gc_momentum=0.9, victim_lr=0.1, victim_batch=64,
                       tgda_leader_lr=0.05, tgda_cg_iters=10, tgda_damping=0.01, gm_lr=0.01, gm_eps_x=16 / 255,
                       maxup_m=4, maxup_sigma=0.1, images=8, gcplus_lr=0.03),
        "ci": dict(reach=dict(_reach31("digits", 200), gc_epochs=300, lbfgs_iters=300), eps_w_list=[0.01, 0.1, 0.5, 1.0], runs=2, tgda_epochs=3, tgda_hessian_batch=64, gm_steps=5, tau_max=3.0, settings=[
            _gc31("mnist-lr", "mnist5k", "lr", 100, 5, 0.1, 10, _ALL31, n_val=100, n_test=200,
                  tau_paper=_TAU31["lr"], influence=False, fig3_eps_w=(0.01, 0.1)),
            _gc31("mnist-nn", "mnist5k", "mlp", 60, 5, 0.03, 10, ["gc", "defenses"], hidden=16, n_val=100,
                  n_test=200, tau_paper=_TAU31["mlp"], sever_params=_LAST31["mlp"]),
            _gc31("mnist-cnn", "mnist5k", "cnn", 20, 1, 0.01, 1, ["pc", "gc"], n_val=50, n_test=100, victim=_CNN_VICTIM,
                  tau_paper=_TAU31["cnn"], sever_params=_LAST31["cnn"]),
        ]),
        "cpu": dict(reach=_reach31("mnist5k", 1000), eps_w_list=_EPSW31, runs=3, tgda_epochs=40, tgda_hessian_batch=256, gm_steps=100, tau_max=3.0, settings=[
            _gc31("mnist-lr", "mnist5k", "lr", 1000, 50, 0.1, 300, _ALL31, tau_paper=_TAU31["lr"],
                  influence=False, fig3_eps_w=(0.02, 0.05, 0.1, 0.2)),
            _gc31("mnist-nn", "mnist5k", "mlp", 1000, 50, 0.03, 300, _ALL31, hidden=128, tau_paper=_TAU31["mlp"],
                  sever_params=_LAST31["mlp"], fig3_eps_w=(0.02, 0.05, 0.1)),
            _gc31("mnist-cnn", "mnist5k", "cnn", 1000, 10, 0.01, 30, ["pc", "gc", "tgda", "gm", "images"],
                  victim=_CNN_VICTIM, tau_paper=_TAU31["cnn"], sever_params=_LAST31["cnn"]),
            _gc31("fashion-mnist-lr", "fashion-mnist", "lr", 1000, 50, 0.1, 300, ["pc", "gc", "tgda", "gm"],
                  n_test=2000, tau_paper=_TAU31["lr"], influence=False),
            _gc31("fashion-mnist-nn", "fashion-mnist", "mlp", 1000, 50, 0.03, 300, ["pc", "gc", "tgda", "gm"],
                  hidden=128, n_test=2000, tau_paper=_TAU31["mlp"], sever_params=_LAST31["mlp"]),
        ]),
        "paper": dict(reach=_reach31("mnist5k", 1000), eps_w_list=_EPSW31, runs=3, tgda_epochs=200, tgda_hessian_batch=1000, gm_steps=250, tau_max=5.0, settings=[
            _gc31("mnist-lr", "mnist", "lr", None, 100, None, 1000, _ALL31, n_val=None, gc_lr=0.5, tau_paper=_TAU31["lr"],
                  influence=False, fig3_eps_w=(0.1, 0.5, 1.0)),
            _gc31("mnist-nn", "mnist", "mlp", None, 100, None, 1000, _ALL31, n_val=None, gc_lr=0.5, tau_paper=_TAU31["mlp"],
                  sever_params=_LAST31["mlp"], influence=False, fig3_eps_w=(0.1, 0.5, 1.0)),
            _gc31("mnist-cnn", "mnist", "cnn", None, 100, None, 1000, _ALL31, n_val=None, gc_lr=0.5, tau_paper=_TAU31["cnn"],
                  sever_params=_LAST31["cnn"], fig3_eps_w=(0.1, 0.5, 1.0)),
            _gc31("cifar10-resnet18", "cifar10", "resnet18", None, 100, None, 1000, ["pc", "gc", "tgda", "gm", "images"],
                  n_val=None, gc_lr=0.5, gc_batch=1000, tau_paper=_TAU31["resnet18"], sever_params=["fc.weight", "fc.bias"]),
            _gc31("tinyimagenet-resnet34", "tinyimagenet", "resnet34", None, 100, None, 1000,
                  ["pc", "gc", "tgda", "gm"], n_val=None, gc_lr=0.5, gc_batch=1000, tau_paper=_TAU31["resnet34"],
                  sever_params=["fc.weight", "fc.bias"], influence=False),
        ]),
    },
})


# Chapter 10, "Dataset condensation" (DC: Zhao et al. 2021; DSA: Zhao & Bilen 2021a; DM: Zhao & Bilen 2021b).
# `plan`: per dataset, the images per class and the iterations of each method at each ipc (an ipc missing from a
# method's dict is not run; DSA uses dc's). `random` is the same-size random real subset. Eval protocol of the
# papers: SGD lr 0.01, momentum 0.9, wd 5e-4, lr x0.1 at half the epochs, batch 256; DC 300 epochs without
# augmentation, DSA/DM (and here the random subset) 1,000 with DSA augmentation. cpu sizes from one-thread timings
# on the shared 2-core machine after the condense package's speed-ups (Fashion-MNIST, width 32, s/iteration: DM 0.44
# at ipc 1 and 0.48 at ipc 10, DSA 1.4 at ipc 1, a DC/DSA outer iteration at ipc 10 about 19; one evaluation epoch
# 0.04 s at ipc 1, 0.1 s at ipc 10; width 128 is 5-14x slower, so it does not fit next to DC at ipc 10): DM 500
# iterations, DC/DSA 80 at ipc 1 and 8 at ipc 10 (150, 40 and 5 before), MNIST-5k DM 200 and DC 40 (60 and 20):
# about 25 + 8 minutes.
# `threads`: torch threads on CPU (two threads on a shared 2-core machine were 1.4-4x slower than one; None keeps
# torch's default). `dm_curve`: DM's images after these iteration counts are evaluated too (`curve_models` networks
# each), for accuracy against iterations; the counts avoid multiples of DM's checkpoint interval (25).
_C10_ALL = ["random", "dc", "dsa", "dm"]
EXPERIMENTS.update({
    "condensation": {
        "common": dict(model="convnet", init="real", dm_lr=1.0, dm_momentum=0.5, dc_lr_img=0.1, dc_momentum=0.5,
                       dc_lr_net=0.01, batch_train=256, eval_lr=0.01, eval_momentum=0.9, eval_weight_decay=5e-4,
                       eval_batch=256),
        "ci": dict(plan=[dict(dataset="digits", ipcs=[1, 10], methods=_C10_ALL,
                              iterations={"dm": {1: 60, 10: 60}, "dc": {1: 20, 10: 1}})],
                   width=32, depth=2, batch_real=64, test_size=None, eval_models=2, eval_epochs_dc=100,
                   eval_epochs_dsa=100, dm_curve=[20], curve_models=1, checkpoint=False, threads=1),
        "cpu": dict(plan=[dict(dataset="fashion-mnist", ipcs=[1, 10], methods=_C10_ALL,
                               iterations={"dm": {1: 500, 10: 500}, "dc": {1: 80, 10: 8}}),
                          dict(dataset="mnist5k", ipcs=[1, 10], methods=_C10_ALL,
                               iterations={"dm": {1: 200, 10: 200}, "dc": {1: 40}})],
                    width=32, depth=3, batch_real=256, test_size=2000, eval_models=3, eval_epochs_dc=200,
                    eval_epochs_dsa=200, dm_curve=[10, 90, 240], curve_models=2, checkpoint=True, threads=1),
        "paper": dict(plan=[dict(dataset=d, ipcs=[1, 10, 50], methods=_C10_ALL,
                                 iterations={"dm": {1: 20_000, 10: 20_000, 50: 20_000},
                                             "dc": {1: 1_000, 10: 1_000, 50: 1_000}})
                            for d in ("fashion-mnist", "mnist", "cifar10")],
                      width=128, depth=3, batch_real=256, test_size=None, eval_models=20, eval_epochs_dc=300,
                      eval_epochs_dsa=1000, dm_curve=[1010, 5010, 10010], curve_models=5, checkpoint=True,
                      threads=None),
    },
})

# Chapter 50, "Unlearnable examples" (D-VAE paper, Yu et al. 2024, Tables 2, 3, 6; attacks of its appendix E.1).
# The victim is the DC ConvNet (the paper: ResNet-18); cpu/ci reduce data, epochs and the attacks' inner loops.
_UE_ATTACKS = ["em", "rem", "tap", "lsp", "ar", "ops"]
_UE_DEFENCES = ["none", "at", "jpeg", "grayscale", "bdr"]
EXPERIMENTS.update({
    "unlearnable-table": {
        "common": dict(attacks=_UE_ATTACKS, defences=_UE_DEFENCES, eps=8 / 255, at_eps=8 / 255, lsp_norm="1.0",
                       ar_norm=1.0, victim_augment="crop_flip", tap_restarts=1, em_steps=20, em_train_steps=10,
                       rem_steps=10),
        "ci": dict(model="convnet", datasets=["fashion-mnist-rgb"], train_size=160, test_size=200, width=16, depth=3,
                   epochs=3, lr=0.05, batch_size=64, surrogate_lr=0.05, em_max_passes=1, rem_max_passes=1,
                   rem_samples=1, rem_adv_steps=1, tap_alpha=2 / 255, tap_steps=5, at_epochs=1, at_steps=2,
                   at_alpha=10 / 255),
        "cpu": dict(model="convnet", datasets=["fashion-mnist-rgb", "fashion-mnist"], train_size=2000, test_size=2000,
                    width=16, depth=3, epochs=15, lr=0.05, batch_size=128, surrogate_lr=0.05, em_max_passes=8, rem_max_passes=2, rem_samples=1,
                    rem_adv_steps=2, tap_alpha=2 / 255, tap_steps=100, at_epochs=10, at_steps=3, at_alpha=5 / 255),
        "paper": dict(model="resnet18", datasets=["cifar10", "cifar100"], train_size=None, test_size=None, width=128, depth=3,
                      epochs=60, lr=0.1, batch_size=128, surrogate_lr=0.1, em_max_passes=100, rem_max_passes=100,
                      rem_samples=5, rem_adv_steps=10, tap_alpha=2 / 255, tap_steps=250, at_epochs=60, at_steps=10,
                      at_alpha=1.6 / 255),
    },
})

def _check_registry() -> None:
    for name, entry in EXPERIMENTS.items():
        missing = [p for p in PROFILES if p not in entry]
        if missing:
            raise AssertionError(f"experiment {name!r} lacks profiles {missing}")
        keys = [set(entry[p]) for p in PROFILES]
        if any(k != keys[0] for k in keys):
            raise AssertionError(f"experiment {name!r}: profiles define different keys: "
                                 + "; ".join(f"{p}: {sorted(k)}" for p, k in zip(PROFILES, keys)))
        clash = set(entry.get("common", {})) & keys[0]
        if clash:
            raise AssertionError(f"experiment {name!r}: keys {sorted(clash)} are both common and per-profile")


def get(experiment: str, profile: str, **overrides: Any) -> Config:
    """The settings of ``experiment`` in ``profile``, with ``overrides`` of existing keys (and ``seed``) applied.

    Raises ``ValueError`` for an unknown profile, experiment or override key, naming the valid ones.
    """
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if experiment not in EXPERIMENTS:
        raise ValueError(f"Unknown experiment {experiment!r}; known: {', '.join(sorted(EXPERIMENTS))}")
    entry = EXPERIMENTS[experiment]
    # deep copies: a caller appending to a returned list must not change the registry (or later calls)
    cfg = Config(copy.deepcopy({**entry.get("common", {}), **entry[profile]}))
    cfg["seed"] = overrides.pop("seed", cfg.get("seed", 0))  # every run record names its seed
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"Unknown setting(s) {unknown} for experiment {experiment!r}; "
                         f"valid: {', '.join(sorted(cfg))}")
    cfg.update(overrides)
    if "derive" in entry:  # settings that follow from others (e.g. another chapter's configuration), resolved here
        cfg.update(entry["derive"](cfg))  # so a record's configuration holds them and is compared by value
    cfg["profile"], cfg["experiment"] = profile, experiment
    return cfg


_check_registry()


# Chapter 40, "Are condensed datasets robust?" (GUARD, papers/002: Tables 1-2, Figure 2, appendices D-F). `plan`:
# per paper dataset (`name`, the metric prefix the published values pair with) the book's dataset that stands in for
# it and the images per class. `loops`: DC's (outer, inner) per ipc; the cpu profile cuts ipc 10's inner loop from 50
# to 5 epochs and runs 10 iterations at ipc 10 and 50 at ipc 1 (2 and 20 before the condense package's speed-up).
# Sizes from process-CPU-time of single pieces on Fashion-MNIST (width 32, 32 real images per class, one thread,
# measured under load): one iteration at ipc 10 DC ~8 s, GUARD ~21 s (the double backward, measured in the 2-iteration
# record); one evaluation network 100 epochs at ipc 10 ~7 s; clean + 3 PGD-10 attacks on 300 images + lambda_1 on
# 64 images ~13 s per network; the 2-iteration record took 18 min, so ~35 min of one core at the sizes below.
# Evaluation: no augmentation (the fork's CURE evaluation applies none), SGD lr 0.01 with the DC protocol.
# `appendix_e`/`appendix_f`: (name, ipc) settings that also get adversarial training on the DC set / ART's PGD and
# Square on DC and GUARD networks.
_G40_METHODS = ["dc", "dsa", "dm", "guard", "guard-code"]
EXPERIMENTS.update({
    "guard-robustness": {
        "common": dict(methods=_G40_METHODS, lam=100.0, h=0.6,
                       appendix_f_attacks=["pgd", "square"], seed=0),
        "ci": dict(plan=[dict(name="mnist", dataset="digits", ipcs=[1])], train_size=None,
                   iterations={"dc": {1: 3}, "dm": {1: 20}}, loops={1: [1, 1]}, width=16, depth=2, batch_real=16,
                   eval_models=2, eval_epochs=30, test_size=150, curv_size=16, curv_iters=8,
                   appendix_e=[["mnist", 1]], appendix_f=[["mnist", 1]], appendix_f_n=30, appendix_f_steps=10,
                   checkpoint=False, threads=1),
        "cpu": dict(plan=[dict(name="mnist", dataset="mnist5k", ipcs=[1, 10]),
                          dict(name="fashion-mnist", dataset="fashion-mnist", ipcs=[1, 10])], train_size=None,
                    iterations={"dc": {1: 50, 10: 10}, "dm": {1: 100, 10: 100}}, loops={1: [1, 1], 10: [10, 5]},
                    width=32, depth=3, batch_real=32, eval_models=3, eval_epochs=60, test_size=200, curv_size=32,
                    curv_iters=10, appendix_e=[["mnist", 10]], appendix_f=[["mnist", 10]], appendix_f_n=100,
                    appendix_f_steps=100, checkpoint=True, threads=1),
        "paper": dict(plan=[dict(name="mnist", dataset="mnist", ipcs=[1, 10]),
                            dict(name="cifar10", dataset="cifar10", ipcs=[1, 10])], train_size=None,
                      iterations={"dc": {1: 1000, 10: 1000}, "dm": {1: 20_000, 10: 20_000}},
                      loops={1: [1, 1], 10: [10, 50]}, width=128, depth=3, batch_real=256, eval_models=50,
                      eval_epochs=1000, test_size=10000, curv_size=256, curv_iters=50,
                      appendix_e=[["mnist", 10], ["cifar10", 10]], appendix_f=[["mnist", 10], ["cifar10", 10]],
                      appendix_f_n=1000, appendix_f_steps=100, checkpoint=True, threads=None),
    },
    "guard-curvature": {
        "common": dict(fd_steps=[0.6, 0.1, 0.01, 0.001, 0.0001, 0.00001], rho=0.5, seed=0, power_iters=100, pgd_steps=50),
        "ci": dict(datasets=[["digits", 500]], width=16, depth=2, epochs=5, n=16, threads=1),
        "cpu": dict(datasets=[["digits", 1000], ["mnist5k", 2000]], width=32, depth=2, epochs=10, n=64, threads=1),
        "paper": dict(datasets=[["digits", 1000], ["mnist", None]], width=128, depth=3, epochs=20, n=256,
                      threads=None),
    },
})
_check_registry()


# Chapter 51, "Purifying unlearnable examples with D-VAE" (Yu et al. 2024, papers/003: Figure 2, Tables 1, 2, 7, 10).
# The unlearnable sets and the victim are chapter 50's (`ue_profile` of "unlearnable-table"); `n_train` of its images
# are purified. VAE settings are the paper's (Adam 5e-3, cosine, lambda 0.01, clip 5) except width/latent/epochs/batch:
# one D-VAE epoch on 1,000 32x32 images at width 8 took 39 s on the shared, loaded 2-core machine (benchmarks/
# bench_dvae.py; width 64 is ~6x slower), so cpu trains 5 epochs of batch 32 per stage (paper 60 of batch 128).
# kld1/kld2 None: chosen from the `targets` sweep by Sec. 3.5's PSNR rule (`select_targets`); `targets` is a grid
# around the paper's 1.0/3.0 (our KLD sums fewer latent channels).
EXPERIMENTS.update({
    "dvae-purification": {
        # chapter 50's configuration (its poisons and victim), resolved into this one's as `ue`
        # (only this chapter's dataset: chapter 50's other datasets are not purified here)
        "derive": lambda c: {"ue": dict(get("unlearnable-table", c["ue_profile"],
                                            **{"datasets": [c["dataset"]], **dict(c["ue_overrides"])}))},
        "common": dict(dataset="fashion-mnist-rgb", kld_weight=0.01, vae_lr=5e-3, extra_term=False, embed="paper",
                       kld1=None, kld2=None),
        "ci": dict(ue_profile="ci", ue_overrides={"epochs": 2}, n_train=120, fig2_attack="lsp", attacks=["lsp"],
                   targets=[0.5, 2.0], jpeg_qualities=[10, 50], defences=["none", "jpeg", "dvae"], table1=False,
                   vae_width=4, vae_latent=8, vae_epochs=2, vae_batch_size=64,
                   partial_attacks=["lsp"], partial_ratios=[0.4], increase_ratios=[0.2]),
        "cpu": dict(ue_profile="cpu", ue_overrides={}, n_train=1000, fig2_attack="em", attacks=["em", "lsp", "ops"],
                    targets=[0.5, 2.0, 8.0], jpeg_qualities=[2, 5, 10, 30, 50, 70, 90],
                    defences=["none", "jpeg", "dvae_x1", "dvae_x2", "dvae", "dvae_mean"], table1=True,
                    vae_width=8, vae_latent=32, vae_epochs=5, vae_batch_size=32,
                    partial_attacks=["em", "lsp"], partial_ratios=[0.2, 0.4, 0.6, 0.8], increase_ratios=[0.04, 0.08]),
        "paper": dict(ue_profile="paper", ue_overrides={}, n_train=None, fig2_attack="em",
                      attacks=["em", "rem", "tap", "lsp", "ar", "ops"], targets=[0.5, 1.0, 2.0, 3.0, 5.0, 10.0],
                      jpeg_qualities=[2, 5, 10, 30, 50, 70, 90],
                      defences=["none", "jpeg", "dvae_x1", "dvae_x2", "dvae", "dvae_mean"], table1=True,
                      vae_width=64, vae_latent=256, vae_epochs=60, vae_batch_size=128,
                      partial_attacks=["em", "rem", "tap", "lsp", "ar", "ops"], partial_ratios=[0.2, 0.4, 0.6, 0.8],
                      increase_ratios=[0.01, 0.02, 0.04, 0.08]),
    },
})
_check_registry()

# Chapter 20, "Poisoned deviation and robust DM" (Zheng & Li 2023, RDM-DC, papers/000). Mixtures: D = N(0, I), B =
# N(delta, I); `alpha` the boundary of Sec. 4.3's remark, `alpha_cal` the Lemma 4.1 distance for the calibrated mean.
# Real features: one class (`source_class`), poisons = its own images moved by l_inf PGD towards the feature mean of
# `target_class` under one fresh ConvNet; fractions are of the class (Sec. 4.3). Clean utility: eps is the class
# fraction of Table 2's attack (1% of a 10-class dataset, all in one class = 10%). cpu sized from one-thread timings
# on the shared 2-core machine after the condense package's speed-ups: DM at ipc 10, batch 256, width 128: 2.9
# s/iteration for one set; the five sets are condensed together (`dm_multi`, about 1.6x one set per iteration:
# benchmarks/results/condense.cpu.json); one evaluation epoch at width 128 about 0.6 s. So width 128 (the paper's)
# and 200 iterations (width 32 and 60 before; 20 when the sets ran one by one) cost 200 x 1.6 x 2.9 + 5 x 3 x 20 x
# 0.6 ~ 17 min, plus the mixtures and the real features (14 s and 24 s in the records of 8280a15): ~18 min.
_RDM_EPS = [0.01, 0.02, 0.04, 0.08]
EXPERIMENTS.update({
    "robust-dm-mixture": {
        "common": dict(sigma=1.0, distance=20.0, alpha=5.0, alpha_cal=6.0, per_coord=1.0, eps_d=0.05,
                       power_iterations=50),
        "ci": dict(n=4000, d=20, reps=4, eps_grid=_RDM_EPS, d_grid=[8, 32, 128]),
        "cpu": dict(n=20000, d=50, reps=4, eps_grid=_RDM_EPS, d_grid=[8, 32, 128, 512]),
        "paper": dict(n=20000, d=50, reps=8, eps_grid=_RDM_EPS, d_grid=[8, 32, 128, 512]),
    },
    "robust-dm-features": {
        "common": dict(dataset="fashion-mnist", source_class=0, target_class=6, fractions=[0.01, 0.05, 0.1],
                       eps_x=[64 / 255, 128 / 255], batch=256, power_iterations=50),
        "ci": dict(class_size=400, draws=2, width=16, depth=2, pgd_steps=3),
        "cpu": dict(class_size=2000, draws=8, width=64, depth=3, pgd_steps=20),
        "paper": dict(class_size=6000, draws=20, width=128, depth=3, pgd_steps=40),
    },
    "robust-dm-clean": {
        "common": dict(eps=0.1, lr=1.0, momentum=0.5, power_iterations=50),
        "ci": dict(dataset="digits", train_size=None, test_size=None, ipc=2, iterations=5, batch_real=64,
                   width=16, depth=2, eval_models=2, eval_epochs=20, threads=1),
        "cpu": dict(dataset="fashion-mnist", train_size=10000, test_size=2000, ipc=10, iterations=200,
                    batch_real=256, width=128, depth=3, eval_models=3, eval_epochs=20, threads=1),
        "paper": dict(dataset="cifar10", train_size=None, test_size=None, ipc=50, iterations=20_000,
                      batch_real=256, width=128, depth=3, eval_models=20, eval_epochs=1000, threads=None),
    },
})

# Chapter 21, "Targeted poisoning of dataset condensation" (Zheng & Li 2023, RDM-DC, papers/000, Sec. 3, 5, Tables
# 1-5). Poisons replace rate x N training images of class y_adv (1%, so eps = 10% of that class, as in the paper);
# DM condenses from noise (Sec. 5.1); the estimators' eps is that class fraction (Sec. 4.3). Departures from the
# paper in cpu: a 2,000-image Fashion-MNIST subset, ipc 10 (paper 50), 200 DM iterations (paper 20,000), ConvNet
# width 16 (paper 128), one evaluation network of 30 epochs per synthetic set (DM's protocol: 1,000), 3 targets x 2
# runs (paper 5 x 5), Witches' Brew with 4 pretrained members (paper 16; epochs 2, 3, 4, 6) and 2 restarts x 30 steps
# (reference 8 x 250), DM poisoning 2 x 100 (the paper gives no count; Algorithm 1's 8 x 250 in the paper profile).
# cpu sized from one-thread timings on the shared 2-core machine: the whole protocol took 215 s at 30 iterations
# (record of 8280a15), and one DM iteration at these shapes (batch 32 per class, ipc 10, from noise) 0.08 s at width
# 16 and 0.15 s at width 32. The 36 condensation calls (one to two sets each) at 200 iterations add about 36 x 170 x
# 0.1 ~ 10 min: ~14 min in all (width 32 would double the condensations' share).
EXPERIMENTS.update({
    "targeted-protocol": {
        "common": dict(rate=0.01, eps_list=[64 / 255, 128 / 255], lr=1.0, momentum=0.5, power_iterations=50,
                       heldout=2),
        "ci": dict(dataset="digits", train_size=None, test_size=None, targets=[0], runs=1, ipc=2, iterations=10,
                   batch_real=32, width=16, depth=2, eval_models=1, eval_epochs=20, ensemble=2, ensemble_epochs=2,
                   gm_steps=8, gm_restarts=1, dm_steps=8, dm_restarts=1, select_nets=2, fresh_nets=4, threads=1),
        "cpu": dict(dataset="fashion-mnist", train_size=2000, test_size=1000, targets=[0, 1, 2], runs=2, ipc=10,
                    iterations=200, batch_real=32, width=16, depth=3, eval_models=1, eval_epochs=30, ensemble=4,
                    ensemble_epochs=6, gm_steps=30, gm_restarts=2, dm_steps=100, dm_restarts=2, select_nets=4,
                    fresh_nets=8, threads=1),
        "paper": dict(dataset="cifar10", train_size=None, test_size=None, targets=[0, 1, 2, 3, 4], runs=5, ipc=50,
                      iterations=20_000, batch_real=256, width=128, depth=3, eval_models=1, eval_epochs=1000,
                      ensemble=16, ensemble_epochs=16, gm_steps=250, gm_restarts=8, dm_steps=250, dm_restarts=8,
                      select_nets=8, fresh_nets=32, threads=None),
    },
})
_check_registry()

# Chapter 31, "Against the authors' code" (watml/plim, GC/*.py): the book's GC next to the released code's variant
# (first parameter tensor only, sum-reduced loss = the book's lr times 2 n^2, plain GD, the first eps_d n points as
# start, normalised inputs, stop when the loss is below 1) and that variant with one option switched back at a time
# (experiments.gc_code). `settings` name gc-networks settings, resolved from the gc-networks entry of `gcn_profile`
# (data, victim, GradPC target and the book's GC are gc_networks' own). `epochs` None: the setting's gc_epochs (as
# the book's GC); the paper profile uses the code's 1,000 (LR) / 2,000 (NN, CNN). A run that overflows is repeated
# with lr_code x lr_backoff, up to backoff_tries rates. pc_eps_abs: the authors' absolute parameter-corruption budgets
# (Table 5's 0.1, the models named _5e-1). cpu timed whole (one thread, shared loaded 2-core machine):
# mnist-lr 73 s, mnist-nn 136 s (3 eps_d x 7 GC runs + 8 victims each, plus the overflowing tries); ci ~5 s.
_GCN_KEEP = ("eps_w_list", "victim_lr", "victim_batch", "gc_momentum", "gradpc_step", "gradpc_batch", "seed")


def _gc_code_networks(c):  # the gc-networks configuration of the named settings, resolved into the record
    full = get("gc-networks", c["gcn_profile"], seed=c["seed"])
    by_name = {s["name"]: s for s in full["settings"]}
    unknown = [s for s in c["settings"] if s not in by_name]
    if unknown:
        raise ValueError(f"gc-code: no gc-networks setting {unknown} in profile {c['gcn_profile']!r}; "
                         f"it has {', '.join(by_name)}")
    return {"gcn": {**{k: full[k] for k in _GCN_KEEP}, "settings": [by_name[s] for s in c["settings"]]}}


EXPERIMENTS.update({
    "gc-code": {
        "derive": _gc_code_networks,
        "common": dict(lr_code={"lr": 10.0, "mlp": 10.0, "cnn": 5.0}, normalise=[0.1307, 0.3081], stop_below=1.0,
                       lr_backoff=0.1, backoff_tries=5, pc_eps_abs=[0.01, 0.1, 0.5]),
        "ci": dict(gcn_profile="ci", settings=["mnist-lr", "mnist-nn"], eps_d_list=[0.1, 1.0], epochs=None),
        "cpu": dict(gcn_profile="cpu", settings=["mnist-lr", "mnist-nn"], eps_d_list=[0.03, 0.1, 1.0], epochs=None),
        "paper": dict(gcn_profile="paper", settings=["mnist-lr", "mnist-nn", "mnist-cnn"],
                      eps_d_list=[0.03, 0.1, 1.0], epochs={"lr": 1000, "mlp": 2000, "cnn": 2000}),
    },
})
_check_registry()
