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
# GC learning rates: binary linear targets use lr = gc_lr / (eps_d ||w||^2) (see the chapter); the
# paper's 0.5 is tuned for 42,000 MNIST images.
_OR_EPS = [0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 1.5, 2.5, 4.0, 6.0, 10.0]
EXPERIMENTS.update({
    "poisonability-or": {
        "common": dict(copies=50, noise=0.05, loss="logistic", gc_lr=50.0, gc_momentum=0.9, retrain_lr=1.0,
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
                       gc_lr=12000.0, gc_momentum=0.9, retrain_epochs=500, retrain_lr=1.0, mlp_gc_lr=10.0),
        "ci": dict(eps_list=[0.1, 1.0, 3.0], gc_epochs=200, mlp_gc_epochs=100),
        "cpu": dict(eps_list=[0.03, 0.1, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0], gc_epochs=1000, mlp_gc_epochs=500),
        "paper": dict(eps_list=[0.03, 0.1, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0], gc_epochs=1000, mlp_gc_epochs=500),
    },
    "poisonability-mnist17": {
        "common": dict(eps_w=0.4, clean_epochs=200, clean_lr=1.0, gc_lr=2500.0, gc_momentum=0.9,
                       retrain_epochs=300, retrain_lr=1.0),
        "ci": dict(dataset="mnist5k", train_size=200, eps_list=[0.1, 1.0], gc_epochs=100),
        "cpu": dict(dataset="mnist5k", train_size=None, eps_list=[0.03, 0.1, 0.3, 1.0, 3.0], gc_epochs=1000),
        "paper": dict(dataset="mnist", train_size=None, eps_list=[0.03, 0.1, 0.3, 1.0, 3.0], gc_epochs=1000),
    },
    "poisonability-least-squares": {
        "common": dict(n=200, target=(-1.0, 0.5), eps_list=[0.05, 0.1, 0.2, 0.5, 1.0], gc_lr=0.5, gm_lr=0.05),
        "ci": dict(gc_epochs=1000, gm_steps=200),
        "cpu": dict(gc_epochs=1000, gm_steps=1000),
        "paper": dict(gc_epochs=1000, gm_steps=1000),
    },
    "poisonability-scaling": {
        "common": dict(eps_w=0.15, eps_list=[0.03, 0.1, 1.0], clean_epochs=300, clean_lr=0.5, gc_lr=10.0,
                       retrain_epochs=100, retrain_lr=0.1),
        "ci": dict(dataset="mnist5k", train_size=300, test_size=300, gc_epochs=20),
        "cpu": dict(dataset="mnist5k", train_size=None, test_size=None, gc_epochs=1000),
        "paper": dict(dataset="mnist", train_size=None, test_size=None, gc_epochs=1000),
    },
})


# Chapter 31, "Gradient Canceling against neural networks" (Lu, Kamath & Yu 2023, Tables 1-5, 9, 10, Figures 3, 7).
# A setting is one dataset + model. gc_lr: by eq. (34) a poison moves by lr/n J^T r, so the paper's 0.5 (42,000
# images, GPU, 1,000 epochs) is kept only in the paper profile; the cpu values were chosen on the GC objective
# (drop of ||g(chi)|| in 30 epochs at eps_d = 1, training data only; the CNN's 10 at 200 images, scaled by eq. (34)'s
# 1/n to 50 at 1,000 images, where 10 victim epochs reach ~91% instead of 54%). tau_paper: the paper's Table 2 tau(2) of the
# model, used to pick the GradPC target (largest validation drop with tau(2) <= tau_paper).
def _gc31(name, dataset, model, n_train, epochs, gc_lr, gc_epochs, parts, *, hidden=None, n_val=400, n_test=None,
          gc_batch=None, tau_paper=1.0, sever_params=None, influence=True, fig3_eps_w=()):
    return dict(name=name, dataset=dataset, model=model, hidden=hidden, n_train=n_train, n_val=n_val, n_test=n_test,
                epochs=epochs, gc_lr=gc_lr, gc_epochs=gc_epochs, gc_batch=gc_batch, tau_paper=tau_paper, parts=parts,
                sever_params=sever_params, influence=influence, fig3_eps_w=list(fig3_eps_w))


def _reach31(dataset, n):  # the reachable-target experiment: LR, L2 weight decay, GC with Adam, L-BFGS victims
    return dict(dataset=dataset, n=n, weight_decay=0.01, gc_epochs=1000, adam_lr=0.03, lbfgs_iters=1000)


_EPSW31 = [0.01, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2, 0.5, 1.0]
_ALL31 = ["pc", "gc", "tgda", "gm", "fig3", "defenses", "table9", "images"]
_TAU31 = {"lr": 1.15, "mlp": 2.48, "cnn": 0.98, "resnet18": 1.29, "resnet34": 1.08}
_LAST31 = {"mlp": ["out.weight", "out.bias"], "cnn": ["fc2.weight", "fc2.bias"]}
EXPERIMENTS.update({
    "gc-networks": {
        "common": dict(eps_d_list=[0.03, 0.1, 1.0],
                       gradpc_step=0.1, gradpc_batch=64, gc_momentum=0.9, victim_lr=0.1, victim_batch=64,
                       tgda_leader_lr=0.05, tgda_cg_iters=10, tgda_damping=0.01, gm_lr=0.01, gm_eps_x=16 / 255,
                       maxup_m=4, maxup_sigma=0.1, images=8, gcplus_lr=0.03),
        "ci": dict(reach=_reach31("digits", 400), eps_w_list=[0.01, 0.1, 0.5, 1.0], runs=2, tgda_epochs=3, tgda_hessian_batch=64, gm_steps=5, tau_max=3.0, settings=[
            _gc31("mnist-lr", "mnist5k", "lr", 100, 5, 50.0, 10, _ALL31, n_val=100, n_test=200,
                  tau_paper=_TAU31["lr"], influence=False, fig3_eps_w=(0.01, 0.1)),
            _gc31("mnist-nn", "mnist5k", "mlp", 60, 5, 50.0, 10, ["gc", "defenses"], hidden=16, n_val=100,
                  n_test=200, tau_paper=_TAU31["mlp"], sever_params=_LAST31["mlp"]),
            _gc31("mnist-cnn", "mnist5k", "cnn", 20, 1, 10.0, 2, ["pc", "gc"], n_val=50, n_test=100,
                  tau_paper=_TAU31["cnn"], sever_params=_LAST31["cnn"]),
        ]),
        "cpu": dict(reach=_reach31("mnist5k", 1000), eps_w_list=_EPSW31, runs=3, tgda_epochs=40, tgda_hessian_batch=256, gm_steps=100, tau_max=3.0, settings=[
            _gc31("mnist-lr", "mnist5k", "lr", 1000, 50, 100.0, 300, _ALL31, tau_paper=_TAU31["lr"],
                  influence=False, fig3_eps_w=(0.02, 0.05, 0.1, 0.2)),
            _gc31("mnist-nn", "mnist5k", "mlp", 1000, 50, 100.0, 300, _ALL31, hidden=128, tau_paper=_TAU31["mlp"],
                  sever_params=_LAST31["mlp"], fig3_eps_w=(0.02, 0.05, 0.1)),
            _gc31("mnist-cnn", "mnist5k", "cnn", 1000, 10, 50.0, 30, ["pc", "gc", "tgda", "gm", "images"],
                  tau_paper=_TAU31["cnn"], sever_params=_LAST31["cnn"]),
            _gc31("fashion-mnist-lr", "fashion-mnist", "lr", 1000, 50, 100.0, 300, ["pc", "gc", "tgda", "gm"],
                  n_test=2000, tau_paper=_TAU31["lr"], influence=False),
            _gc31("fashion-mnist-nn", "fashion-mnist", "mlp", 1000, 50, 100.0, 300, ["pc", "gc", "tgda", "gm"],
                  hidden=128, n_test=2000, tau_paper=_TAU31["mlp"], sever_params=_LAST31["mlp"]),
        ]),
        "paper": dict(reach=_reach31("mnist5k", 1000), eps_w_list=_EPSW31, runs=3, tgda_epochs=200, tgda_hessian_batch=1000, gm_steps=250, tau_max=5.0, settings=[
            _gc31("mnist-lr", "mnist", "lr", None, 100, 0.5, 1000, _ALL31, n_val=None, tau_paper=_TAU31["lr"],
                  influence=False, fig3_eps_w=(0.1, 0.5, 1.0)),
            _gc31("mnist-nn", "mnist", "mlp", None, 100, 0.5, 1000, _ALL31, n_val=None, tau_paper=_TAU31["mlp"],
                  sever_params=_LAST31["mlp"], influence=False, fig3_eps_w=(0.1, 0.5, 1.0)),
            _gc31("mnist-cnn", "mnist", "cnn", None, 100, 0.5, 1000, _ALL31, n_val=None, tau_paper=_TAU31["cnn"],
                  sever_params=_LAST31["cnn"], fig3_eps_w=(0.1, 0.5, 1.0)),
            _gc31("cifar10-resnet18", "cifar10", "resnet18", None, 100, 0.5, 1000, ["pc", "gc", "tgda", "gm", "images"],
                  n_val=None, gc_batch=1000, tau_paper=_TAU31["resnet18"], sever_params=["fc.weight", "fc.bias"]),
            _gc31("tinyimagenet-resnet34", "tinyimagenet", "resnet34", None, 100, 0.5, 1000,
                  ["pc", "gc", "tgda", "gm"], n_val=None, gc_batch=1000, tau_paper=_TAU31["resnet34"],
                  sever_params=["fc.weight", "fc.bias"], influence=False),
        ]),
    },
})


# Chapter 10, "Dataset condensation" (DC: Zhao et al. 2021; DSA: Zhao & Bilen 2021a; DM: Zhao & Bilen 2021b).
# `plan`: per dataset, the images per class and the iterations of each method at each ipc (an ipc missing from a
# method's dict is not run; DSA uses dc's). `random` is the same-size random real subset. Eval protocol of the
# papers: SGD lr 0.01, momentum 0.9, wd 5e-4, lr x0.1 at half the epochs, batch 256; DC 300 epochs without
# augmentation, DSA/DM (and here the random subset) 1,000 with DSA augmentation. cpu sizes were chosen from timings
# of short runs on the 2 shared CPU cores at width 32 with one torch thread (s/iteration on Fashion-MNIST, another
# job on the other core: DM 1.6, DC/DSA 2.8 at ipc 1 and about 90 at ipc 10; one evaluation network at ipc 10
# 0.12 s/epoch; width 128 was 5-20x slower), to stay well under 60 minutes. `threads`: torch threads on CPU (two
# threads on a shared 2-core machine were 1.4-4x slower than one; None keeps torch's default).
_C10_ALL = ["random", "dc", "dsa", "dm"]
EXPERIMENTS.update({
    "condensation": {
        "common": dict(model="convnet", init="real", dm_lr=1.0, dm_momentum=0.5, dc_lr_img=0.1, dc_momentum=0.5,
                       dc_lr_net=0.01, batch_train=256, eval_lr=0.01, eval_momentum=0.9, eval_weight_decay=5e-4,
                       eval_batch=256),
        "ci": dict(plan=[dict(dataset="digits", ipcs=[1, 10], methods=_C10_ALL,
                              iterations={"dm": {1: 60, 10: 60}, "dc": {1: 20, 10: 1}})],
                   width=32, depth=2, batch_real=64, test_size=None, eval_models=2, eval_epochs_dc=100,
                   eval_epochs_dsa=100, checkpoint=False, threads=1),
        "cpu": dict(plan=[dict(dataset="fashion-mnist", ipcs=[1, 10], methods=_C10_ALL,
                               iterations={"dm": {1: 150, 10: 150}, "dc": {1: 40, 10: 2}}),
                          dict(dataset="mnist5k", ipcs=[1, 10], methods=_C10_ALL,
                               iterations={"dm": {1: 60, 10: 60}, "dc": {1: 20}})],
                    width=32, depth=3, batch_real=256, test_size=2000, eval_models=3, eval_epochs_dc=200,
                    eval_epochs_dsa=200, checkpoint=True, threads=1),
        "paper": dict(plan=[dict(dataset=d, ipcs=[1, 10, 50], methods=_C10_ALL,
                                 iterations={"dm": {1: 20_000, 10: 20_000, 50: 20_000},
                                             "dc": {1: 1_000, 10: 1_000, 50: 1_000}})
                            for d in ("fashion-mnist", "mnist", "cifar10")],
                      width=128, depth=3, batch_real=256, test_size=None, eval_models=20, eval_epochs_dc=300,
                      eval_epochs_dsa=1000, checkpoint=True, threads=None),
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
    """The settings of ``experiment`` in ``profile``, with ``overrides`` of existing keys applied.

    Raises ``ValueError`` for an unknown profile, experiment or override key, naming the valid ones.
    """
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if experiment not in EXPERIMENTS:
        raise ValueError(f"Unknown experiment {experiment!r}; known: {', '.join(sorted(EXPERIMENTS))}")
    entry = EXPERIMENTS[experiment]
    cfg = Config({**entry.get("common", {}), **entry[profile]})
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"Unknown setting(s) {unknown} for experiment {experiment!r}; "
                         f"valid: {', '.join(sorted(cfg))}")
    cfg.update(overrides)
    cfg["profile"], cfg["experiment"] = profile, experiment
    return cfg


_check_registry()
