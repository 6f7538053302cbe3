"""Purification with rate-constrained VAEs and D-VAE (Yu et al. 2024, papers/003, Sec. 3.2, 3.4, 3.5).

* :func:`kld`: the KL term of appendix B.1 (Kingma & Welling 2014), averaged as the authors' code does.
* :func:`rate_constraint`: ``lambda * max(KLD, kld_target)`` of eqs. (3) and (14).
* :func:`train_vae`: eq. (3), a :class:`~poisonbook.models.RateVAE` trained on an (unlearnable) dataset.
* :func:`train_dvae`: eq. (14), a :class:`~poisonbook.models.DVAE`.
* :func:`vae_reconstruct`, :func:`dvae_infer`: batched inference (sampled or mean ``z``).
* :func:`dvae_purify`: Algorithm 1, the two-stage purification, returning ``x1, x2, x3`` and ``p0, p1``.

Defaults are the paper's and its code's (appendix B, yuyi-sd/D-VAE): Adam lr 5e-3 with a cosine schedule,
batch 128, 60 epochs per stage, lambda = 0.01, targets 1.0 (stage 1) and 3.0 (stage 2, CIFAR-10), gradient
norm clipped at 5.0, no augmentation. Eq. (14) sums squared norms; like the code, the distortion terms here are
per-pixel means (MSE), the scale for which lambda = 0.01 was chosen. Differences from the code: the code adds
``max(MSE(p_hat, 0), 0.002)`` from epoch 10 (``extra_term=True`` turns it on), clamps ``x_hat + p_hat`` to
[0, 1] inside the second term (not in eq. 14; not done here), seeds only CUDA and quantises the purified images
to uint8 in place (here everything is seeded, runs on any device and stays float).
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from .. import checks
from ..cache import Checkpoint, fingerprint
from ..models import DVAE, RateVAE

__all__ = ["kld", "rate_constraint", "psnr", "train_vae", "train_dvae", "vae_reconstruct", "dvae_infer",
           "dvae_purify", "PurifyResult"]

EXTRA_TERM_FROM, EXTRA_TERM_FLOOR = 10, 0.002  # the authors' code (not in eq. 14)


def kld(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Appendix B.1: ``-1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)``, ``KL(N(mu, sigma^2) || N(0, I))``.

    ``mu, logvar`` are (N, C, h, w) latent maps: the sum runs over the C latent channels and the result is
    averaged over the batch and the spatial positions (the authors' code), so a target of 1.0 means one nat
    per latent position.
    """
    if mu.shape != logvar.shape or mu.ndim < 2:
        raise checks.BadInput(f"kld: mu and logvar must have the same (N, C, ...) shape, got "
                              f"{tuple(mu.shape)} and {tuple(logvar.shape)}")
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(1).mean()


def rate_constraint(kl: torch.Tensor, target: float, weight: float = 0.01) -> torch.Tensor:
    """``weight * max(KLD, target)`` (eqs. 3, 14): no gradient once the rate is below ``target``."""
    return weight * torch.clamp(kl, min=target)


@torch.no_grad()
def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR (dB) of images in [0, 1]: ``10 log10(1 / MSE)`` over the whole set."""
    mse = F.mse_loss(x.float(), ref.float()).item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def _loss(model, xb, yb, gen, target, weight, extra):
    out = model(xb, yb, generator=gen)
    loss = F.mse_loss(out["x_hat"], xb) + rate_constraint(kld(out["mu"], out["logvar"]), target, weight)
    if "p_hat" in out:  # eq. (14): the perturbation decoder explains the residual x - x_hat
        loss = loss + F.mse_loss(out["p_hat"], xb - out["x_hat"])
        if extra:
            loss = loss + torch.clamp(out["p_hat"].pow(2).mean(), min=EXTRA_TERM_FLOOR)
    return loss


def _train(model: nn.Module, x, y, *, kld_target, epochs, lr, batch_size, kld_weight, clip, extra_term, seed,
           checkpoint, where) -> dict:
    """The loop of eqs. (3)/(14): Adam, cosine lr, gradient clipping; checkpointed per epoch, resumes bit-identically."""
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1))
    order_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    history, start = {"loss": [], "kld": [], "seconds": 0.0}, 0
    if checkpoint is not None:
        config = dict(where=where, kld_target=kld_target, epochs=epochs, lr=lr, batch_size=batch_size,
                      kld_weight=kld_weight, clip=clip, extra_term=extra_term, seed=seed, data=fingerprint(x, y),
                      model=repr(model))
        checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint, config)
        if (state := checkpoint.load()) is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            order_gen.set_state(state["order_gen"])
            noise_gen.set_state(state["noise_gen"].to(noise_gen.get_state().device))
            history, start = state["history"], state["epoch"] + 1
    n = len(x)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        model.train()
        total = kl_total = 0.0
        for idx in torch.randperm(n, generator=order_gen).split(batch_size):
            xb, yb = x[idx].to(device), y[idx].to(device)
            loss = _loss(model, xb, yb, noise_gen, kld_target, kld_weight, extra_term and epoch >= EXTRA_TERM_FROM)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            total += checks.finite_loss(loss, epoch, where, "lower lr") * len(idx)
        sched.step()
        with torch.no_grad():  # the rate reached this epoch, on the last batch's encoding
            model.eval()
            mu, logvar = model.encode(x[:batch_size].to(device))
            kl_total = float(kld(mu, logvar))
        history["loss"].append(total / n)
        history["kld"].append(kl_total)
        history["seconds"] += time.perf_counter() - t0
        if checkpoint is not None:
            checkpoint.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "order_gen": order_gen.get_state(),
                             "noise_gen": noise_gen.get_state(), "history": history, "epoch": epoch})
    model.eval()
    return history


def _images(x, where):
    x = checks.images(x, "x", where=where)
    if x.shape[2] != x.shape[3] or x.shape[2] % 2:
        raise checks.BadInput(f"{where}: x must hold square images of even size, got {tuple(x.shape[2:])}")
    return x


def _inputs(x, y, num_classes, where):
    x = _images(x, where)
    return x, checks.labels(y, "y", num_classes=num_classes, n=len(x), where=where)


def _settings(kld_target, epochs, lr, batch_size, kld_weight, clip, seed, where):
    return dict(kld_target=checks.number(kld_target, "kld_target", low=0.0, where=where),
                epochs=checks.integer(epochs, "epochs", where=where),
                lr=checks.number(lr, "lr", low=0.0, low_open=True, where=where),
                batch_size=checks.integer(batch_size, "batch_size", low=1, where=where),
                kld_weight=checks.number(kld_weight, "kld_weight", low=0.0, where=where),
                clip=checks.number(clip, "clip", low=0.0, low_open=True, where=where),
                seed=checks.integer(seed, "seed", where=where))


def train_vae(x: torch.Tensor, *, kld_target: float, epochs: int = 60, lr: float = 5e-3, batch_size: int = 128,
              kld_weight: float = 0.01, clip: float = 5.0, width: int = 64, latent: int = 256, seed: int = 0,
              device: str | torch.device | None = None, checkpoint: str | os.PathLike | Checkpoint | None = None
              ) -> tuple[RateVAE, dict]:
    """Eq. (3): train a fresh :class:`RateVAE` on ``x`` with ``MSE(x_hat, x) + lambda max(KLD, kld_target)``."""
    where = "train_vae"
    x = _images(x, where)
    s = _settings(kld_target, epochs, lr, batch_size, kld_weight, clip, seed, where)
    torch.manual_seed(s["seed"])
    model = RateVAE(x.shape[1], width=checks.integer(width, "width", low=2, where=where),
                    latent=checks.integer(latent, "latent", low=1, where=where)).to(device or "cpu")
    hist = _train(model, x, torch.zeros(len(x), dtype=torch.long), extra_term=False, checkpoint=checkpoint,
                  where=where, **s)
    return model, hist


def train_dvae(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, kld_target: float, epochs: int = 60,
               lr: float = 5e-3, batch_size: int = 128, kld_weight: float = 0.01, clip: float = 5.0,
               extra_term: bool = False, embed: str = "paper", width: int = 64, latent: int = 256, seed: int = 0,
               device: str | torch.device | None = None, checkpoint: str | os.PathLike | Checkpoint | None = None
               ) -> tuple[DVAE, dict]:
    """Eq. (14): train a fresh :class:`DVAE` on ``(x, y)``.

    Loss ``MSE(x_hat, x) + MSE(p_hat, x - x_hat) + lambda max(KLD, kld_target)`` with ``z`` sampled; with
    ``extra_term=True`` also the code's ``max(MSE(p_hat, 0), 0.002)`` from epoch 10. ``embed`` chooses eq. (14)'s
    ``u_y + z`` ("paper") or the code's ``e_y + post_conv(z)`` ("code").
    """
    where = "train_dvae"
    num_classes = checks.integer(num_classes, "num_classes", low=1, where=where)
    x, y = _inputs(x, y, num_classes, where)
    s = _settings(kld_target, epochs, lr, batch_size, kld_weight, clip, seed, where)
    checks.choice(embed, "embed", ("paper", "code"), where=where)
    torch.manual_seed(s["seed"])
    model = DVAE(x.shape[1], num_classes, x.shape[2], width=checks.integer(width, "width", low=2, where=where),
                 latent=checks.integer(latent, "latent", low=1, where=where), embed=embed).to(device or "cpu")
    hist = _train(model, x, y, extra_term=bool(extra_term), checkpoint=checkpoint, where=where, **s)
    return model, hist


@torch.no_grad()
def _batched(model, x, y, z, seed, batch_size, keys):
    checks.choice(z, "z", ("sample", "mean"), where="inference")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    outs = {k: [] for k in keys}
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size].to(device), None if y is None else y[i:i + batch_size].to(device),
                    generator=gen, sample=z == "sample")
        for k in keys:
            outs[k].append(out[k].cpu())
    return [torch.cat(outs[k]) for k in keys]


def vae_reconstruct(model: RateVAE, x: torch.Tensor, *, z: str = "sample", seed: int = 0,
                    batch_size: int = 512) -> torch.Tensor:
    """``x_hat`` of a trained VAE (eval mode, batched; ``z`` sampled as in the authors' code, or ``"mean"``)."""
    x = checks.images(x, "x", where="vae_reconstruct")
    return _batched(model, x, None if not isinstance(model, DVAE) else torch.zeros(len(x), dtype=torch.long),
                    z, seed, batch_size, ["x_hat"])[0]


def dvae_infer(model: DVAE, x: torch.Tensor, y: torch.Tensor, *, z: str = "sample", seed: int = 0,
               batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_hat, p_hat)`` of a trained D-VAE on ``(x, y)``."""
    x = checks.images(x, "x", where="dvae_infer")
    y = checks.labels(y, "y", num_classes=model.class_embedding.shape[0], n=len(x), where="dvae_infer")
    return tuple(_batched(model, x, y, z, seed, batch_size, ["x_hat", "p_hat"]))


class PurifyResult(NamedTuple):
    x1: torch.Tensor       # clamp(x0 - p0): stage 1's subtraction
    x2: torch.Tensor       # clamp(x1 - p1): stage 2's subtraction
    x3: torch.Tensor       # x_hat(x2) of the stage-2 D-VAE: the purified set (z as chosen)
    x3_mean: torch.Tensor  # the same with the mean latent (the code's unused variant)
    p0: torch.Tensor       # disentangled perturbations of stage 1 (on x0)
    p1: torch.Tensor       # of stage 2 (on x1)
    models: tuple          # (stage-1 D-VAE, stage-2 D-VAE)
    history: dict          # {"stage1": ..., "stage2": ...}


def dvae_purify(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, kld1: float = 1.0, kld2: float = 3.0,
                z: str = "sample", seed: int = 0, checkpoint_dir: str | os.PathLike | None = None,
                **train_kw) -> PurifyResult:
    """Algorithm 1: two-stage purification of an unlearnable set ``P0 = (x, y)``.

    Stage 1: a fresh D-VAE trained by eq. (14) with the small target ``kld1`` on ``P0``; ``x1 = x0 - p_hat0``.
    Stage 2: a fresh D-VAE with the larger target ``kld2`` on ``P1``; ``x2 = x1 - p_hat1``; ``x3 = x_hat(x2)``.
    Subtractions are clamped to [0, 1] (the code; images must stay images). ``train_kw`` goes to
    :func:`train_dvae` (epochs, lr, batch_size, kld_weight, clip, extra_term, embed, width, latent, device).
    """
    where = "dvae_purify"
    x, y = _inputs(x, y, checks.integer(num_classes, "num_classes", low=1, where=where), where)
    kld1 = checks.number(kld1, "kld1", low=0.0, where=where)
    kld2 = checks.number(kld2, "kld2", low=0.0, where=where)
    checks.choice(z, "z", ("sample", "mean"), where=where)

    def ckpt(stage):
        return None if checkpoint_dir is None else os.path.join(checkpoint_dir, f"dvae-stage{stage}.pt")
    m1, h1 = train_dvae(x, y, num_classes, kld_target=kld1, seed=seed, checkpoint=ckpt(1), **train_kw)
    _, p0 = dvae_infer(m1, x, y, z=z, seed=seed)
    x1 = (x - p0).clamp(0, 1)
    m2, h2 = train_dvae(x1, y, num_classes, kld_target=kld2, seed=seed + 1, checkpoint=ckpt(2), **train_kw)
    _, p1 = dvae_infer(m2, x1, y, z=z, seed=seed + 1)
    x2 = (x1 - p1).clamp(0, 1)
    x3, _ = dvae_infer(m2, x2, y, z=z, seed=seed + 2)
    x3_mean, _ = dvae_infer(m2, x2, y, z="mean")
    return PurifyResult(x1, x2, x3, x3_mean, p0, p1, (m1, m2), {"stage1": h1, "stage2": h2})
