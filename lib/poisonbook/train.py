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

from .cache import Checkpoint
from .data import check_images

__all__ = ["seed_everything", "choose_device", "fit", "evaluate", "predict", "model_device"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed ``random``, numpy and torch; return a fresh ``torch.Generator`` seeded with ``seed``."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
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
        return lambda e: 0.5 * (1 + math.cos(math.pi * e / epochs))
    raise ValueError(f"Unknown schedule {schedule!r}; choose constant, step or cosine")


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

    Data may live on any device; batches are moved to the model's device.
    """
    check_images(x, y, where="fit")
    if epochs < 0 or lr <= 0 or batch_size < 1:
        raise ValueError(f"fit needs epochs >= 0, lr > 0, batch_size >= 1 (got {epochs}, {lr}, {batch_size})")
    device = model_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"Unknown optimizer {optimizer!r}; choose sgd or adam")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(schedule, epochs, milestones))
    gen = torch.Generator().manual_seed(seed)
    history: dict = {"loss": [], "seconds": 0.0}
    start = 0
    if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        config = dict(epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, momentum=momentum,
                      weight_decay=weight_decay, schedule=schedule, milestones=milestones, seed=seed, n=len(x),
                      model=type(model).__name__)
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
            total += loss.item() * len(idx)
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
    check_images(x, where="predict")
    was_training = model.training
    model.eval()
    device = model_device(model)
    out = torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).to(x.device)
                     for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Accuracy of ``model`` on ``(x, y)`` in [0, 1]."""
    check_images(x, y, where="evaluate")
    return (predict(model, x, batch_size) == y.to(x.device)).float().mean().item()
