"""Chapter 10, "Dataset condensation": DC, DSA and DM side by side with a random real subset of the same size.

For one dataset of the profile's plan (``profiles.EXPERIMENTS["condensation"]``) :func:`condense_dataset`
condenses the training set (``train+val``) at every images-per-class of the plan with every method, evaluates
each set by the papers' protocol (``condense.evaluate_synthetic``) and returns the run record: the metrics
``<method>.ipc<k>.{acc_mean, acc_std, accuracies, iterations, seconds_per_iteration, condense_seconds,
eval_seconds}`` (nested), ``dm_curve`` ``{"ipc<k>": {iterations, acc_mean, acc_std}}`` (DM's images after each count of
``cfg.dm_curve`` evaluated by the same protocol with ``cfg.curve_models`` networks: accuracy against iterations),
the matching losses as ``losses``, and the synthetic sets as artefacts.
"""

from __future__ import annotations

import torch

from .. import augment, cache, condense, data, train
from ..profiles import Config

__all__ = ["METHODS", "dataset_config", "condense_dataset"]

METHODS = ("random", "dc", "dsa", "dm")


def dataset_config(cfg: Config, dataset: str) -> Config:
    """The configuration of one dataset of the plan: the shared settings and that plan entry (as ``entry``)."""
    entries = {e["dataset"]: e for e in cfg["plan"]}
    if dataset not in entries:
        raise ValueError(f"no dataset {dataset!r} in the plan of this profile; it has {', '.join(entries)}")
    return Config({**{k: v for k, v in cfg.items() if k != "plan"}, "entry": entries[dataset]})


def _checkpoint(cfg: Config, method: str, ipc: int):
    # one file per setting and configuration: a changed profile never meets an old checkpoint
    if not cfg.checkpoint:
        return None
    key = cache.config_hash(dict(cfg, method=method, ipc=ipc), length=10)
    name = cfg["entry"]["dataset"]
    return cache.cache_dir() / "condense" / f"{cfg.get('profile')}-{name}-{method}-ipc{ipc}-seed{cfg.get('seed', 0)}-{key}.pt"


_DM_CHECKPOINT_EVERY = 25


def _snapshots(cfg: Config, ipc: int, iterations: int, ckpt):
    """DM's synthetic images after each iteration count of ``cfg.dm_curve`` below ``iterations``, for the
    accuracy-against-iterations curve: a ``dm`` callback, and a function returning {count: images} at the end.

    With a checkpoint each snapshot is also written beside it, so a resumed run (whose callback only sees
    the iterations after the checkpoint) still has the earlier ones. The counts must not be multiples of the
    checkpoint interval: a run killed between a checkpoint and that iteration's callback would lose one."""
    counts = sorted(k for k in cfg.dm_curve if 0 < k < iterations)
    if ckpt is not None and any(k % _DM_CHECKPOINT_EVERY == 0 for k in counts):
        raise ValueError(f"dm_curve {counts} must avoid multiples of the checkpoint interval {_DM_CHECKPOINT_EVERY}")
    path = (lambda k: ckpt.with_name(f"{ckpt.stem}-it{k}.pt")) if ckpt is not None else None
    kept = {}

    def callback(it, images, loss):
        if it + 1 in counts:  # ``it`` is 0-based: after it, it + 1 iterations are done
            kept[it + 1] = images.detach().cpu().clone()
            if path is not None:
                cache.atomic_save(kept[it + 1], path(it + 1))

    def collect():
        for k in counts:
            if k not in kept:
                if path is None or not path(k).exists():
                    raise RuntimeError(f"DM snapshot at iteration {k} of ipc {ipc} is missing; delete the "
                                       f"checkpoint {ckpt} to re-run")
                kept[k] = cache.load_torch(path(k), f"delete {path(k)} and the checkpoint {ckpt}")
        return {k: kept[k] for k in counts}
    return callback, collect


def _condense(cfg: Config, method: str, ipc: int, iterations: int, train_set, stats, strategy, callback=None):
    common = dict(iterations=iterations, batch_real=cfg.batch_real, init=cfg.init, stats=stats,
                  seed=cfg.get("seed", 0), checkpoint=_checkpoint(cfg, method, ipc), width=cfg.width, depth=cfg.depth)
    if method == "dm":
        return condense.dm(train_set.x, train_set.y, ipc, lr=cfg.dm_lr, momentum=cfg.dm_momentum, strategy=strategy,
                           checkpoint_every=_DM_CHECKPOINT_EVERY, callback=callback, **common)
    dc_kw = dict(lr_img=cfg.dc_lr_img, momentum=cfg.dc_momentum, lr_net=cfg.dc_lr_net, batch_train=cfg.batch_train,
                 checkpoint_every=1, **common)
    if method == "dc":
        return condense.dc(train_set.x, train_set.y, ipc, **dc_kw)
    return condense.dsa(train_set.x, train_set.y, ipc, strategy=strategy, **dc_kw)


def _curve(snapshots: dict, cond, ys, test_set, epochs, aug, eval_kw) -> dict:
    """Accuracy of DM's synthetic set after each snapshot's iteration count (pixel coordinates, as ``cond.x``)."""
    mean, std = (t.view(1, -1, 1, 1) for t in cond.stats)
    out = {"iterations": [], "acc_mean": [], "acc_std": []}
    for k, images in snapshots.items():
        ev = condense.evaluate_synthetic(images * std + mean, ys, test_set.x, test_set.y, epochs=epochs,
                                         strategy=aug, **eval_kw)
        out["iterations"].append(k), out["acc_mean"].append(100 * ev.mean), out["acc_std"].append(100 * ev.std)
    return out


def condense_dataset(cfg: Config) -> dict:
    """Every method at every images-per-class of ``cfg["entry"]`` (a :func:`dataset_config`); the run record."""
    entry, seed, device = cfg["entry"], cfg.get("seed", 0), train.choose_device()
    threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)  # see profiles.py: one thread is faster on the shared 2-core machine
    try:
        train.seed_everything(seed)
        name = entry["dataset"]
        train_set = data.load(name, "train+val").to(device)
        test_set = data.load(name, "test")
        if cfg.test_size and cfg.test_size < len(test_set):
            test_set = data.subset(test_set, cfg.test_size, seed=seed)
        test_set = test_set.to(device)
        stats, strategy = condense.channel_stats(train_set.x), augment.strategy_for(name)
        eval_kw = dict(num_models=cfg.eval_models, lr=cfg.eval_lr, momentum=cfg.eval_momentum,
                       weight_decay=cfg.eval_weight_decay, batch_size=cfg.eval_batch, stats=stats, seed=seed,
                       width=cfg.width, depth=cfg.depth)
        its = {m: entry["iterations"]["dm" if m == "dm" else "dc"] for m in ("dc", "dsa", "dm")}
        metrics, losses, artefacts, curves = {}, {}, {}, {}
        for ipc in entry["ipcs"]:
            for method in entry["methods"]:
                n_it = None if method == "random" else its[method].get(ipc)
                if method != "random" and n_it is None:
                    continue
                cond, callback, collect = None, None, None
                if method == "dm":
                    callback, collect = _snapshots(cfg, ipc, n_it, _checkpoint(cfg, method, ipc))
                if method == "random":
                    xs, ys = condense.random_subset(train_set.x, train_set.y, ipc, seed=seed)
                else:
                    cond = _condense(cfg, method, ipc, n_it, train_set, stats, strategy, callback)
                    xs, ys = cond.x, cond.y
                    losses[f"{method}.ipc{ipc}"] = cond.loss
                epochs, aug = (cfg.eval_epochs_dc, None) if method == "dc" else (cfg.eval_epochs_dsa, strategy)
                ev = condense.evaluate_synthetic(xs, ys, test_set.x, test_set.y, epochs=epochs, strategy=aug, **eval_kw)
                if collect is not None:  # the same protocol on DM's earlier images, fewer networks
                    curves[f"ipc{ipc}"] = _curve(collect(), cond, ys, test_set, epochs,
                                                 aug, dict(eval_kw, num_models=cfg.curve_models))
                artefacts[f"{method}_ipc{ipc}_x"], artefacts[f"{method}_ipc{ipc}_y"] = xs.cpu(), ys.cpu()
                metrics.setdefault(method, {})[f"ipc{ipc}"] = dict(
                    acc_mean=100 * ev.mean, acc_std=100 * ev.std, accuracies=[100 * a for a in ev.accuracies],
                    iterations=cond.iterations if cond else 0,
                    seconds_per_iteration=cond.seconds_per_iteration if cond else 0.0,
                    condense_seconds=cond.seconds if cond else 0.0, eval_seconds=ev.seconds)
    finally:
        torch.set_num_threads(threads)
    scale = (f"{name}: {len(train_set)} training images (train+val), {len(test_set)} test images; ConvNet width "
             f"{cfg.width}, depth {cfg.depth}; real batch {cfg.batch_real} per class; iterations DM {its['dm']}, "
             f"DC/DSA {its['dc']} (by ipc); evaluation: {cfg.eval_models} networks, {cfg.eval_epochs_dc} epochs (DC) / "
             f"{cfg.eval_epochs_dsa} epochs with DSA (others); {device.type}")
    return {"metrics": metrics, "losses": losses, "dm_curve": curves, "classes": list(train_set.classes),
            "artefacts": artefacts, "scale": scale, "device": device.type}
