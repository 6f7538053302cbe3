"""Chapter 00, "How to use this book": a ConvNet trained on a real subset, and a killed run resumed."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .. import data, models, train

__all__ = ["train_and_resume"]


class _Killed(Exception):
    pass


def _kill_after(epoch_to_kill: int):
    def callback(epoch, model, history):
        if epoch == epoch_to_kill:
            raise _Killed(f"killed after epoch {epoch + 1}")
    return callback


def train_and_resume(cfg) -> dict:
    """Train the DC ConvNet with the condensation papers' evaluation recipe; kill a second run half way, resume it.

    Metrics: test accuracy, the last training loss, seconds per epoch, and whether the resumed run
    ends with weights and a loss curve identical to the uninterrupted one. Curves: the loss per epoch.
    """
    device = train.choose_device()
    train_full, test_full = data.load(cfg.dataset, "train+val"), data.load(cfg.dataset, "test")
    train_set = data.subset(train_full, cfg.train_size, seed=cfg.seed) if cfg.train_size else train_full
    test_set = data.subset(test_full, cfg.test_size, seed=cfg.seed) if cfg.test_size else test_full

    def new_model():
        train.seed_everything(cfg.seed)
        return models.make(cfg.model, train_set.shape, train_set.num_classes, width=cfg.width).to(device)

    recipe = dict(epochs=cfg.epochs, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                  batch_size=cfg.batch_size, schedule=cfg.schedule, seed=cfg.seed)
    model = new_model()
    history = train.fit(model, train_set.x, train_set.y, **recipe)
    test_acc = train.evaluate(model, test_set.x, test_set.y)

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "tour.pt"
        try:
            train.fit(new_model(), train_set.x, train_set.y, checkpoint=ckpt, checkpoint_every=cfg.checkpoint_every,
                      callback=_kill_after(cfg.epochs // 2 - 1), **recipe)
        except _Killed:
            pass
        killed_with_checkpoint = ckpt.exists()
        resumed = new_model()  # a fresh process starts from fresh weights too
        resumed_history = train.fit(resumed, train_set.x, train_set.y, checkpoint=ckpt,
                                    checkpoint_every=cfg.checkpoint_every, **recipe)
    same_weights = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))
    return {
        "metrics": {"test_accuracy": test_acc, "final_train_loss": history["loss"][-1],
                    "seconds_per_epoch": history["seconds"] / cfg.epochs,
                    "resume_identical": bool(same_weights and resumed_history["loss"] == history["loss"]),
                    "killed_with_checkpoint": killed_with_checkpoint},
        "curves": {"loss": history["loss"], "resumed_loss": resumed_history["loss"]},
        "scale": (f"{len(train_set)} {cfg.dataset} training images, {len(test_set)} test images, "
                  f"ConvNet width {cfg.width}, {cfg.epochs} epochs"),
        "device": str(device),
    }
