"""Seeding, device choice, and the one training loop of the book (``fit``), with ``evaluate``/``predict``.

``fit`` covers every training recipe the papers use: SGD or Adam, a constant, step or cosine
schedule per epoch, optional augmentation of each batch, and checkpoint/resume. All its
randomness (shuffling, augmentation draws) comes from one ``torch.Generator`` that is saved
in the checkpoint, so an interrupted run resumed from its checkpoint ends with the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import random
import time
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import checks
from .cache import Checkpoint, fingerprint

__all__ = ["seed_everything", "choose_device", "fit", "evaluate", "predict", "model_device"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed ``random``, numpy and torch; return a fresh ``torch.Generator`` seeded with ``seed``."""
    seed = checks.integer(seed, "seed", where="seed_everything")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def choose_device(prefer: str | None = None) -> torch.device:
    """``prefer`` or ``$POISONBOOK_DEVICE`` if given, else CUDA when available, else CPU."""
    name = prefer or os.environ.get("POISONBOOK_DEVICE")
    if name:
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _lr_factor(schedule: str, epochs: int, milestones: tuple[float, ...]) -> Callable[[int], float]:
    if schedule == "constant":
        return lambda e: 1.0
    if schedule == "step":  # x0.1 at each milestone (fractions of the epochs); DC: (0.5,)
        marks = [int(m * epochs) for m in milestones]
        return lambda e: 0.1 ** sum(e >= m for m in marks)
    if schedule == "cosine":
        return lambda e: 0.5 * (1 + math.cos(math.pi * e / max(epochs, 1)))  # epochs=0 trains nothing
    raise AssertionError(schedule)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
        batch_size: int = 256, optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 0.0,
        schedule: str = "constant", milestones: tuple[float, ...] = (0.5,),
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
        seed: int = 0, progress: bool = False, checkpoint: Checkpoint | str | os.PathLike | None = None,
        checkpoint_every: int = 1, callback: Callable[[int, nn.Module, dict], None] | None = None) -> dict:
    """Train ``model`` in place on ``(x, y)``; return the history ``{"loss": [...], "seconds": s}``.

    * ``optimizer``: ``"sgd"`` (with ``momentum``) or ``"adam"``; ``weight_decay`` for both.
    * ``schedule``: ``"constant"``, ``"step"`` (x0.1 at each fraction in ``milestones``; the DC
      evaluation protocol halves at 0.5) or ``"cosine"``, stepped once per epoch.
    * ``augment(batch, generator)``: applied to every training batch (e.g. DSA).
    * ``checkpoint``: a path or :class:`~poisonbook.cache.Checkpoint`; the loop saves its full state
      there every ``checkpoint_every`` epochs and resumes from it when called again. A finished
      run's checkpoint makes a repeated call return at once.
    * ``callback(epoch, model, history)``: called after every epoch (raising in it stops training).

    Data may live on any device; batches are moved to the model's device. Images may be in any
    range (the condensation protocol trains on standardised images); the
    labels are checked against the model's number of logits (:func:`poisonbook.checks.model_labels`). A loss that
    becomes NaN or infinite stops training with a ``FloatingPointError`` naming the epoch.
    """
    where = "fit"
    x = checks.images(x, "x", domain=None, where=where)
    epochs = checks.integer(epochs, "epochs", where=where)
    lr = checks.number(lr, "lr", low=0.0, low_open=True, where=where)
    batch_size = checks.integer(batch_size, "batch_size", low=1, where=where)
    momentum = checks.fraction(momentum, "momentum", where=where)
    weight_decay = checks.number(weight_decay, "weight_decay", low=0.0, where=where)
    checks.choice(optimizer, "optimizer", ("sgd", "adam"), where=where)
    checks.choice(schedule, "schedule", ("constant", "step", "cosine"), where=where)
    checks.integer(seed, "seed", where=where)
    y = checks.model_labels(model, x, y, "y", where=where)
    device = model_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(schedule, epochs, milestones))
    gen = torch.Generator().manual_seed(seed)
    history: dict = {"loss": [], "seconds": 0.0}
    start = 0
    if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        config = dict(epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, momentum=momentum,
                      weight_decay=weight_decay, schedule=schedule, milestones=milestones, seed=seed,
                      model=type(model).__name__, augment=augment, loss_fn=loss_fn, data=fingerprint(x, y))
        checkpoint = Checkpoint(checkpoint, config, every=checkpoint_every)
    if checkpoint is not None and (state := checkpoint.load()) is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        history, start = state["history"], state["epoch"] + 1

    epoch_iter = range(start, epochs)
    if progress:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(epoch_iter, initial=start, total=epochs, desc=type(model).__name__, leave=False)
    n = len(x)
    for epoch in epoch_iter:
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            if augment is not None:
                xb = augment(xb, gen)
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += checks.finite_loss(loss, epoch, where, "lower the learning rate or check the "
                                        "model's weights for NaN") * len(idx)
        sched.step()
        history["loss"].append(total / n)
        history["seconds"] += time.perf_counter() - t0
        if checkpoint is not None and checkpoint.due(epoch, epochs - 1):
            checkpoint.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "generator": gen.get_state(),
                             "history": history, "epoch": epoch})
        if callback is not None:
            callback(epoch, model, history)
    model.eval()
    return history


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted labels (on ``x``'s device), in eval mode; the model's mode is restored afterwards."""
    x = checks.images(x, "x", domain=None, where="predict")
    batch_size = checks.integer(batch_size, "batch_size", low=1, where="predict")
    was_training = model.training
    model.eval()
    device = model_device(model)
    out = torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).to(x.device)
                     for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Accuracy of ``model`` on ``(x, y)`` in [0, 1]."""
    x = checks.images(x, "x", domain=None, where="evaluate")
    y = checks.model_labels(model, x, y, "y", where="evaluate")
    return (predict(model, x, batch_size) == y.to(x.device)).float().mean().item()
