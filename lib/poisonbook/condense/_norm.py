"""Instance norm for channels-last feature maps: the ConvNet's ``GroupNorm(C, C)``, with a backward that stays fast.

PyTorch's CPU ``group_norm`` in channels-last memory, with one channel per group (instance norm), was slow on
the ConvNet's maps at width 128: the backward about 7x slower than in channels-first memory (16 x 128 x 32 x 32,
forward and backward: 17 ms against 2.5 ms) and the forward 3-4x slower on the 16 x 16 and 8 x 8 maps. It also
looked like a one-pass variance: on maps whose mean is 60 times their spread its float32 output was 2e-4 to
2e-3 off (channels-first: 2e-6). :func:`instance_norm` writes the same map with reductions over (H, W) and
element-wise ops, which run at memory speed in either layout, and a two-pass variance
(``tests/test_norm.py``; ``benchmarks/bench_dm_multi.py`` times the kernels and DM with and without it).

``_core._net_layout`` applies :func:`fast_norms` to every channels-last network (DM's default path): one DM
iteration ran 1.17x faster and five sets 1.19x (2 AMD EPYC cores, 15 interleaved rounds, per-round medians).
"""

from __future__ import annotations

import torch
from torch import nn


def _moments(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x - mu``, ``mu`` and ``1 / sqrt(var + eps)`` per (sample, channel) over (H, W): the biased variance, from
    the centred values (two passes, no cancellation)."""
    mu = x.mean((2, 3), keepdim=True)
    xc = x - mu
    return xc, mu, torch.rsqrt(xc.square().mean((2, 3), keepdim=True) + eps)


class _InstanceNorm(torch.autograd.Function):
    """``y = (x - mu) * rstd * w + b`` per (sample, channel) with the gradient of Ba, Kiros & Hinton's layer norm
    (as ``torch.nn.functional.group_norm``'s)::

        dx = rstd * w * (dy - mean(dy) - xhat * mean(dy * xhat)),   dw = sum(dy * xhat),   db = sum(dy),

    means over (H, W), sums over (N, H, W). Under ``create_graph`` (DC differentiates its synthetic gradient)
    ``mu`` and ``rstd`` are recomputed from ``x`` so that the backward is itself differentiable."""

    generate_vmap_rule = True  # only torch ops: torch.func.vmap/grad (DC's per-class gradients) work

    @staticmethod
    def forward(x, weight, bias, eps):
        xc, mu, rstd = _moments(x, eps)
        y = xc.mul_(rstd * weight.view(1, -1, 1, 1)).add_(bias.view(1, -1, 1, 1))  # in place: one map less
        return y, mu, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, eps = inputs
        _, mu, rstd = output
        ctx.save_for_backward(x, weight, mu, rstd)
        ctx.mark_non_differentiable(mu, rstd)
        ctx.eps = eps

    @staticmethod
    def backward(ctx, dy, _dmu, _drstd):
        x, weight, mu, rstd = ctx.saved_tensors
        hw = x.shape[2] * x.shape[3]
        db = dy.sum((2, 3), keepdim=True)
        if torch.is_grad_enabled():  # create_graph: mu, rstd as differentiable functions of x, no in-place ops
            xc, _, rstd = _moments(x, ctx.eps)
            xhat = xc * rstd
            dw = (dy * xhat).sum((2, 3), keepdim=True)
            dx = (rstd * weight.view(1, -1, 1, 1)) * (dy - db / hw - xhat * (dw / hw))
        else:  # two feature maps allocated, not seven: fresh 8 MB maps cost page faults on a CPU
            xhat = (x - mu).mul_(rstd)
            dw = (dy * xhat).sum((2, 3), keepdim=True)
            dx = xhat.mul_(-dw / hw).add_(dy).sub_(db / hw).mul_(rstd * weight.view(1, -1, 1, 1))
        return dx, dw.sum(0).flatten(), db.sum(0).flatten(), None


def instance_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``F.group_norm(x, C, weight, bias, eps)`` with one group per channel (N, C, H, W), in ``x``'s memory layout."""
    return _InstanceNorm.apply(x, weight, bias, eps)[0]


class InstanceNorm(nn.Module):
    """A ``GroupNorm(C, C)`` computed by :func:`instance_norm`, holding that module's own weight and bias."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return instance_norm(x, self.weight, self.bias, self.eps)


def fast_norms(network: nn.Module) -> nn.Module:
    """``network`` with each affine ``GroupNorm`` of one channel per group replaced, in place, by an
    :class:`InstanceNorm` sharing its parameters (same outputs up to float rounding; same ``state_dict`` keys)."""
    for module in list(network.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.GroupNorm) and child.affine and child.num_groups == child.num_channels:
                setattr(module, name, InstanceNorm(child))
    return network
