"""One figure style for the book, an image grid, and ``savefig``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["use_style", "image_grid", "savefig"]

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "image.cmap": "gray",
}


def use_style() -> None:
    """Apply the book's matplotlib style."""
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)


def image_grid(images: torch.Tensor, labels=None, class_names=None, ncol: int = 10, title: str | None = None,
               scale: float = 1.0):
    """Show (N, C, H, W) images in [0, 1] in a grid of ``ncol`` columns; return the figure.

    ``labels`` (optional) are written above each image, through ``class_names`` when given.
    """
    import matplotlib.pyplot as plt

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"image_grid expects (N, 1 or 3, H, W) images, got {tuple(images.shape)}")
    n = len(images)
    ncol = min(ncol, n)
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(scale * 1.1 * ncol, scale * 1.25 * nrow), squeeze=False)
    imgs = images.detach().float().cpu().clamp(0, 1)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = imgs[i].permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        if labels is not None:
            lab = int(labels[i])
            ax.set_title(class_names[lab] if class_names is not None else str(lab), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def savefig(fig, path: str | os.PathLike) -> Path:
    """Save ``fig`` (folders created; PNG unless the suffix says otherwise)."""
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
