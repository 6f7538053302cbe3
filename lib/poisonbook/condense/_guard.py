"""GUARD (papers/002): DC matching the gradient of a curvature-regularised real loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .. import checks
from ._core import Condensed, callable_key, channel_stats
from ._dc import dc

GUARD_FORMS = ("paper", "code")


class CurvatureLoss:
    """GUARD's real-batch loss ``L_R = l + lambda * mean_i R_i`` (papers/002, eq. (8) and (10)).

    ``form="paper"`` (eq. 8): ``z = h g / ||g||`` with ``g = grad_x l(x)`` and
    ``R = ||grad_x l(x + z) - grad_x l(x)||_2^2``. ``form="code"`` (the authors' DC fork,
    ``main_CURE.py``): ``z = h sign(g) / ||sign(g)||`` (the sign rescaled to l2 norm ``h``),
    ``R = ||grad_x l(x + z) - grad_x l(x)||_2`` (not squared), computed with the model in eval mode.
    Defaults as in the fork: ``lam`` = 100, ``h`` = 0.6 in [0, 1] pixel units. The direction ``z``
    is a constant (detached, as in CURE, Moosavi-Dezfooli et al. 2019); both input gradients keep
    their graph (``create_graph=True``) so that DC's parameter gradient of ``L_R`` sees the curvature.

    Called as ``real_loss(model, x, y)`` by :func:`dc` on *standardised* images
    ``u = (x_pixel - mean) / std``: pixel gradients are ``grad_u / std`` and a pixel step ``z`` is
    ``z / std`` in ``u``; pass the standardisation's ``std`` (None: the images are pixels). The
    per-sample input gradients of a whole class batch come from one backward pass of the *summed*
    loss, exact when each sample's output depends on its own input only (the ConvNet's instance
    norm; not batch norm in training mode). ``loss(logits, y, reduction=...)``: the per-sample loss
    ``l``, default cross-entropy. With ``lam == 0`` it is exactly ``loss(model(x), y)`` (no R is
    computed). Its ``__name__`` carries every parameter, so it enters :func:`dc`'s checkpoint key.
    """

    #: A mean over the rows of per-row terms (``l`` and ``R_i`` are per image): :func:`dc` may differentiate it
    #: piece by piece (``chunk``).
    rowwise_mean = True

    def __init__(self, lam: float = 100.0, h: float = 0.6, form: str = "paper", std=None,
                 loss: Callable = F.cross_entropy):
        where = "CurvatureLoss"
        self.lam = checks.number(lam, "lam (lambda)", low=0.0, where=where)
        self.h = checks.number(h, "h", low=0.0, low_open=True, where=where)
        self.form = checks.choice(form, "form", GUARD_FORMS, where=where)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32).flatten()
        if self.std is not None:
            checks.finite(self.std, "std", where=where)
            if not bool((self.std > 0).all()):
                raise checks.BadInput(f"{where}: std must be > 0, got {self.std.tolist()}")
        self.loss = loss

    @property
    def __name__(self) -> str:
        std = "none" if self.std is None else ",".join(f"{float(s):.6g}" for s in self.std)
        return (f"guard(form={self.form},lambda={self.lam!r},h={self.h!r},std=[{std}],"
                f"loss={getattr(self.loss, '__name__', repr(self.loss))})")

    def __repr__(self) -> str:
        return self.__name__

    def key(self) -> dict:
        """Every parameter, for :func:`callable_key` (the checkpoint key of :func:`dc`)."""
        return dict(name="guard", form=self.form, lam=self.lam, h=self.h,
                    std=None if self.std is None else [float(s) for s in self.std],
                    loss=callable_key(self.loss) if self.loss is not F.cross_entropy else "cross_entropy")

    def _input_grad(self, model: nn.Module, u: torch.Tensor, y: torch.Tensor, scale) -> torch.Tensor:
        (g,) = torch.autograd.grad(self.loss(model(u), y, reduction="sum"), u, create_graph=True)
        return g / scale

    def regulariser(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample ``R_i`` (shape (n,)) of the batch ``x`` (standardised), differentiable in the parameters."""
        scale = 1.0 if self.std is None else self.std.to(x.device).view(1, -1, *[1] * (x.ndim - 2))
        was_training = model.training
        if self.form == "code":
            model.eval()
        try:
            u = x.detach().requires_grad_(True)
            g0 = self._input_grad(model, u, y, scale)
            d = g0.detach() if self.form == "paper" else g0.detach().sign()
            norm = d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.ndim - 1))
            z = self.h * d / norm  # a step of l2 length h in pixel units
            u1 = (x.detach() + z / scale).requires_grad_(True)
            g1 = self._input_grad(model, u1, y, scale)
        finally:
            model.train(was_training)
        diff = (g1 - g0).flatten(1).norm(dim=1)
        return diff**2 if self.form == "paper" else diff

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        base = self.loss(model(x), y, reduction="mean")
        if self.lam == 0:
            return base
        return base + self.lam * self.regulariser(model, x, y).mean()


def guard(x: torch.Tensor, y: torch.Tensor, ipc: int, *, lam: float = 100.0, h: float = 0.6, form: str = "paper",
          stats: tuple | None = None, **kwargs) -> Condensed:
    """GUARD (papers/002, eq. (10), appendix C): :func:`dc` (or DSA with ``strategy``) matching the
    parameter gradient of the curvature-regularised real loss :class:`CurvatureLoss` (eq. (8);
    ``lam`` = 100, ``h`` = 0.6 in pixel units, ``form`` "paper" or "code") instead of the plain
    cross-entropy; the synthetic side is unchanged. All other arguments and defaults are
    :func:`dc`'s (the paper's DC loops, 1,000 iterations, image lr 0.1, network lr 0.01, 256 real
    images per class). ``lam=0`` gives :func:`dc`'s synthetic set bit for bit.
    """
    x = checks.images(x, "x", domain=None, where="condense.guard")
    if stats is None:
        stats = channel_stats(x)
    real_loss = CurvatureLoss(lam, h, form, std=stats[1])
    return dc(x, y, ipc, real_loss=real_loss, stats=stats, method="guard", **kwargs)
