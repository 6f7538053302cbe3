"""Pre-training purification of unlearnable examples: image shortcut squeezing (ISS; Liu et al. 2023).

ISS applies one simple compression to every training image before the classifier sees it; the
D-VAE paper (Yu et al. 2024, appendix E.2) runs its three variants with the ISS settings:

* :func:`jpeg`: JPEG compression at quality 10, through Pillow (one encode/decode per image).
* :func:`grayscale`: ITU-R 601 luma ``0.299 R + 0.587 G + 0.114 B`` (torchvision's
  ``rgb_to_grayscale``), repeated over the three channels so the classifier is unchanged.
* :func:`bit_depth_reduction`: quantisation to ``2**bits`` uniform levels, ``bits = 2`` (4 levels
  ``0, 1/3, 2/3, 1``), ``round(x (L - 1)) / (L - 1)``. The D-VAE repository's BDR gives 5 levels
  (``levels=5``: ``round(4 x) / 4``); apbench's 2-bit posterize keeps the top two bits
  (``floor(4 x) / 4`` in [0, 3/4]). Both are noted, the paper's 2 bits is the default.

The rate-constrained VAE and D-VAE (chapter 51) are planned.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from .. import checks

__all__ = ["jpeg", "grayscale", "bit_depth_reduction", "ISS", "iss"]


def jpeg(x: torch.Tensor, quality: int = 10) -> torch.Tensor:
    """JPEG-compress each image at ``quality`` (ISS: 10) with Pillow and decode it back to [0, 1]."""
    from PIL import Image

    x = checks.images(x, "x", where="jpeg")
    quality = checks.integer(quality, "quality", low=1, high=95, where="jpeg")
    c = x.shape[1]
    if c not in (1, 3):
        raise checks.BadInput(f"jpeg: x must have 1 or 3 channels, got {c}")
    arr = (x.detach().cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    out = np.empty_like(arr)
    for i, im in enumerate(arr):  # Pillow encodes one image at a time
        buf = io.BytesIO()
        pil = Image.fromarray(im[..., 0], "L") if c == 1 else Image.fromarray(im, "RGB")
        pil.save(buf, "JPEG", quality=quality)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        out[i] = dec[..., None] if c == 1 else dec
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div(255).to(x.device)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma ``0.299 R + 0.587 G + 0.114 B`` repeated over 3 channels (torchvision's weights)."""
    x = checks.images(x, "x", channels=3, where="grayscale")
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True).expand_as(x).contiguous()


def bit_depth_reduction(x: torch.Tensor, bits: int = 2, *, levels: int | None = None) -> torch.Tensor:
    """Quantise to ``levels`` (default ``2**bits``) uniform levels in [0, 1]: ``round(x (L-1)) / (L-1)``."""
    x = checks.images(x, "x", where="bit_depth_reduction")
    bits = checks.integer(bits, "bits", low=1, high=8, where="bit_depth_reduction")
    levels = 2 ** bits if levels is None else checks.integer(levels, "levels", low=2, high=256,
                                                              where="bit_depth_reduction")
    return torch.round(x * (levels - 1)) / (levels - 1)


ISS = {"jpeg": jpeg, "grayscale": grayscale, "bdr": bit_depth_reduction}


def iss(x: torch.Tensor, method: str) -> torch.Tensor:
    """One of the ISS compressions by name: ``jpeg`` (quality 10), ``grayscale`` or ``bdr`` (2 bits)."""
    checks.choice(method, "method", tuple(ISS), where="iss")
    return ISS[method](x)
