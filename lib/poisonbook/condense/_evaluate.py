"""The "Random" coreset baseline and the evaluation protocol of a synthetic set (DC/DSA/DM)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from .. import augment as aug
from .. import checks
from ..data import ClassSampler
from ..train import fit, predict
from ._core import Evaluation, Standardize, _classes, _default_factory, _fresh_net, _labelled, _standardizer

def random_subset(x: torch.Tensor, y: torch.Tensor, ipc: int, *, seed: int = 0,
                  num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` random real images of every class, class-major (the papers' "Random" coreset baseline)."""
    where = "condense.random_subset"
    x, y, classes = _labelled(x, y, num_classes, where)
    ipc = checks.integer(ipc, "ipc (images per class)", low=1, where=where)
    idx = ClassSampler(y, classes).indices(ipc, torch.Generator().manual_seed(seed)).to(x.device)
    return x[idx].clone(), y.to(x.device)[idx].clone()


def evaluate_synthetic(x_syn: torch.Tensor, y_syn: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                       *,
                       num_models: int = 20, epochs: int = 300, strategy: str | None = None, lr: float = 0.01,
                       momentum: float = 0.9, weight_decay: float = 5e-4, batch_size: int = 256,
                       net: Callable[[], nn.Module] | None = None, width: int = 128, depth: int = 3,
                       num_classes: int | None = None, stats: tuple | None = None, seed: int = 0,
                       probe: torch.Tensor | None = None, keep_models: bool = False,
                       progress: bool = False) -> Evaluation:
    """Train ``num_models`` fresh networks on a synthetic set and test them (the DC/DSA/DM protocol).

    Each network (default: ConvNet, ``width`` 128, depth 3; seeded by ``seed + i``) is trained
    with :func:`poisonbook.train.fit`: SGD ``lr`` 0.01, ``momentum`` 0.9, ``weight_decay`` 5e-4,
    lr x0.1 at half the ``epochs``, ``batch_size`` 256. The papers use 300 epochs without
    augmentation for DC and 1,000 epochs with DSA augmentation (``strategy``, applied
    non-Siamese to every batch) for DSA and DM; DC and DSA train 20 models per synthetic set.
    Images are standardised with ``stats`` (per-channel mean, std; default: of ``x_syn``
    itself, so pass the real training set's, e.g. ``Condensed.stats``) before training,
    testing and probing.

    ``probe``: images whose predicted labels are returned for every model
    (``Evaluation.predictions``, shape (num_models, len(probe))), e.g. Part II's targeted
    sample. ``keep_models``: return the networks, wrapped with :class:`Standardize` so they take
    inputs in the caller's coordinates. Accuracy std is the population std over the models.
    """
    where = "evaluate_synthetic"
    x_syn = checks.images(x_syn, "x_syn", domain=None, where=where)
    x_test = checks.images(x_test, "x_test", domain=None, where=where)
    y_syn = checks.labels(y_syn, "y_syn", n=len(x_syn), where=where)
    y_test = checks.labels(y_test, "y_test", n=len(x_test), where=where)
    classes = (_classes(y_syn, num_classes, where) if num_classes is not None
               else int(max(y_syn.max(), y_test.max())) + 1)
    checks.labels(y_syn, "y_syn", num_classes=classes, where=where)
    checks.labels(y_test, "y_test", num_classes=classes, where=where)
    if x_syn.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"synthetic images {tuple(x_syn.shape[1:])} and test images "
                         f"{tuple(x_test.shape[1:])} differ in shape")
    if probe is not None:
        probe = checks.images(probe, "probe", domain=None, where=where)
        if probe.shape[1:] != x_syn.shape[1:]:
            raise ValueError(f"probe images {tuple(probe.shape[1:])} differ in shape from "
                             f"{tuple(x_syn.shape[1:])}")
    num_models = checks.integer(num_models, "num_models", low=1, where=where)
    epochs = checks.integer(epochs, "epochs", where=where)
    aug.parse_strategy(strategy or "none")
    mean, std = _standardizer(x_syn, stats)
    device = x_syn.device
    xs = (x_syn - mean) / std
    xt = (x_test.to(device) - mean) / std
    xp = (probe.to(device) - mean) / std if probe is not None else None
    factory = net or _default_factory(tuple(x_syn.shape[1:]), classes, width, depth)
    augment_fn = (lambda xb, g: aug.augment(xb, strategy, g)) if strategy else None
    accs, preds, kept = [], [], []
    t0 = time.perf_counter()
    for i in range(num_models):
        model = _fresh_net(factory, seed + i, device)
        fit(model, xs, y_syn, epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
            batch_size=batch_size, schedule="step", milestones=(0.5,), augment=augment_fn, seed=seed + i,
            progress=progress)
        accs.append((predict(model, xt) == y_test.to(device)).float().mean().item())
        if xp is not None:
            preds.append(predict(model, xp))
        if keep_models:
            kept.append(nn.Sequential(Standardize(mean.flatten(), std.flatten()), model).to(device).eval())
    return Evaluation(accs, time.perf_counter() - t0, torch.stack(preds) if preds else None,
                      kept if keep_models else None)
