"""DC (Zhao, Mopuri & Bilen 2021) and DSA (Zhao & Bilen 2021a): gradient matching."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .. import augment as aug
from .. import checks
from ..cache import Checkpoint
from ._core import (DC_LOOPS, Condensed, _chunk, _compiled, _default_factory, _distance, _end_iteration, _finish,
                    _finite, _fingerprint, _forward, _fresh_net, _layout, _make_checkpoint, _mean_backward, _mean_grad,
                    _net_layout, _per_sample, _progress, _seed_from, _setup, _start, callable_key, cross_entropy_loss)

def dc(x: torch.Tensor, y: torch.Tensor, ipc: int, *, iterations: int = 1_000, lr_img: float = 0.1,
       momentum: float = 0.5, lr_net: float = 0.01, batch_real: int = 256, batch_train: int = 256,
       loops: tuple[int, int] | None = None, init: str = "real", strategy: str | None = None,
       real_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy_loss,
       net: Callable[[], nn.Module] | None = None, width: int = 128, depth: int = 3,
       num_classes: int | None = None, stats: tuple | None = None, seed: int = 0,
       checkpoint: Checkpoint | str | os.PathLike | None = None, checkpoint_every: int = 10,
       callback: Callable[[int, torch.Tensor, float], None] | None = None,
       progress: bool = False, method: str = "dc", channels_last: bool = False,
       batch_classes: bool = False, chunk: int | str | None = "auto", compile: bool = False) -> Condensed:
    """Gradient matching (Zhao, Mopuri & Bilen 2021, "Dataset Condensation with Gradient Matching", Alg. 1).

    For each of ``iterations`` network initialisations (the paper's outer loop, K = 1,000):
    repeat ``outer_loop`` times (the paper's T): for every class c draw ``batch_real`` real
    images, compute the parameter gradient of ``real_loss(net, real_c, c)`` and of the
    cross-entropy on the synthetic images of class c (with ``create_graph``), add their
    :func:`match_distance` (the paper's layer-wise distance D: per layer and output channel
    ``1 - cos``, 1-D parameters skipped), and take one SGD step on the synthetic images (``lr_img`` 0.1,
    ``momentum`` 0.5) with the sum over classes; then, except after the last of these, train
    the network for ``inner_loop`` epochs on the synthetic set (plain SGD, ``lr_net`` 0.01,
    batches of ``batch_train`` 256; with DSA, each batch augmented non-Siamese).
    ``loops = (outer_loop, inner_loop)`` defaults to :data:`DC_LOOPS` (1 -> (1, 1), 10 -> (10, 50),
    50 -> (50, 10)); other ``ipc`` need explicit loops.

    The per-class real gradients are computed in a loop over the classes (a parameter gradient per
    class needs a backward pass per class), never over samples. ``batch_classes=True`` computes them
    in one pass over all classes instead (``torch.func.vmap`` of ``torch.func.grad`` of each class's
    mean cross-entropy): exact, up to float rounding, for the default ``real_loss`` and a network
    without batch norm (the ConvNet's instance norm is per sample); other cases keep the loop. It pays
    where many small kernels cost more than their arithmetic (a GPU); on a CPU the loop over classes, in
    pieces (``chunk``), is faster, and ``vmap``'s grouped convolutions are slower
    (``benchmarks/bench_condense.py``), so it is off by default (it takes whole batches). ``channels_last``:
    the network and images in channels-last memory (same results up to float rounding). Off by default, unlike
    :func:`dm`: every pass of DC needs gradients, and on a CPU PyTorch's group-norm backward in channels-last
    memory took 5.5 ms where channels-first took 1.3 ms (16 x 128 x 32 x 32), more than the faster forward
    convolutions gain; DC's and GUARD's iterations were faster channels-first (``benchmarks/bench_condense.py``).
    ``chunk``: every mean loss over a batch (the real loss of a class, the synthetic loss, a training
    batch) is differentiated in pieces of this many images, ``sum_k (n_k / n) grad loss(piece_k)``, so that
    each piece's feature maps are reused from the heap, not mapped afresh with a page fault per page
    (:data:`~poisonbook.condense.CPU_CHUNK`), and stay in the CPU's cache (``"auto"``: ``condense.CPU_CHUNK`` = 16
    on a CPU, whole batches on a GPU; None: whole batches). The gradients are the same up to float rounding for a
    per-sample network and a ``real_loss`` that is a mean of per-image terms (``real_loss.rowwise_mean``:
    the cross-entropy and GUARD's :class:`CurvatureLoss`); other losses and batch-norm networks keep whole
    batches. ``compile=True`` runs the network's forward pass through ``torch.compile`` (fused kernels for
    the forward and backward) where only first derivatives are taken: the inner loop's training batches and,
    with the default cross-entropy ``real_loss``, the real gradients. The synthetic gradient needs a second
    derivative (``create_graph``), which compiled graphs do not support, so it stays eager, as does any other
    ``real_loss``. The one-off compilation falls in the first iteration (``Condensed.compile_seconds`` is its
    time, part of ``seconds``); it pays in long runs (``benchmarks/bench_condense.py``).

    ``strategy``: None for DC; a DSA strategy makes it DSA (:func:`dsa`): one transform per
    class (``per_group_op=True``) applied to the real and the synthetic batch of the class.
    ``real_loss(model, x, y) -> scalar``: the loss whose parameter gradient on the real batch
    is matched (GUARD adds its curvature term here); default cross-entropy. ``init`` "real"
    (reference) or "noise". ``checkpoint``, ``callback`` and ``stats`` as in :func:`dm`, per
    network initialisation. The recorded loss of an iteration is the mean over its ``outer_loop``
    image updates of the class-summed distance.
    """
    where = f"condense.{method}"
    x = checks.images(x, "x", domain=None, where=where)  # float64 -> float32, the networks' dtype
    classes, sampler, mean, std, batch_real, ipc = _setup(x, y, ipc, init, num_classes, batch_real, stats,
                                                          where)
    iterations = checks.integer(iterations, "iterations", where=where)
    lr_img = checks.number(lr_img, "lr_img", low=0.0, low_open=True, where=where)
    lr_net = checks.number(lr_net, "lr_net", low=0.0, low_open=True, where=where)
    batch_train = checks.integer(batch_train, "batch_train", low=1, where=where)
    momentum = checks.fraction(momentum, "momentum", where=where)
    if loops is None:
        if ipc not in DC_LOOPS:
            raise ValueError(f"{where}: no reference (outer_loop, inner_loop) for ipc={ipc} (known: "
                             f"{DC_LOOPS}); pass loops=(outer, inner)")
        loops = DC_LOOPS[ipc]
    if len(loops) != 2:
        raise ValueError(f"loops must be (outer_loop, inner_loop), got {loops!r}")
    outer_loop = checks.integer(loops[0], "outer_loop", low=1, where=where)
    inner_loop = checks.integer(loops[1], "inner_loop", where=where)
    aug.parse_strategy(strategy or "none")
    device = x.device
    chunk = _chunk(chunk, device, where)
    rowwise = bool(getattr(real_loss, "rowwise_mean", False))
    factory = net or _default_factory(tuple(x.shape[1:]), classes, width, depth)
    config = dict(method=method, ipc=ipc, iterations=iterations, lr_img=lr_img, momentum=momentum,
                  lr_net=lr_net, batch_real=batch_real, batch_train=batch_train,
                  loops=[outer_loop, inner_loop], init=init,
                  strategy=strategy or "none", real_loss=callable_key(real_loss),
                  width=width if net is None else "custom", depth=depth if net is None else "custom",
                  classes=classes, seed=seed, data=_fingerprint(x, y))
    ckpt = _make_checkpoint(checkpoint, config, checkpoint_every)

    cl = bool(channels_last)
    real_std, gen, syn, opt_img, history, seconds, start = _start(x, mean, std, sampler, ipc, classes, init,
                                                                  seed, lr_img, momentum, ckpt, cl)
    y_real = torch.arange(classes, device=device).repeat_interleave(batch_real)
    y_syn = torch.arange(classes, device=device).repeat_interleave(ipc)
    fwd, compile_seconds = _compiled(_forward, bool(compile)), 0.0

    for it in _progress(range(start, iterations), progress, iterations, method.upper()):
        t0 = time.perf_counter()
        network = _net_layout(_fresh_net(factory, _seed_from(gen), device), cl)
        network.train()
        matched = [p for p in network.parameters() if p.ndim >= 2]  # 1-D gradients are skipped anyway
        per_sample = _per_sample(network)
        batched = batch_classes and real_loss is cross_entropy_loss and per_sample
        rows = chunk if per_sample else None  # batch norm: a piece's statistics would differ
        opt_net = torch.optim.SGD(network.parameters(), lr=lr_net)

        def ce(a, b, forward=_forward):  # the synthetic loss stays eager: it is differentiated twice
            return F.cross_entropy(forward(network, a), b)

        def real(a, b):  # the default loss through the (compiled) forward
            return ce(a, b, fwd) if real_loss is cross_entropy_loss else real_loss(network, a, b)

        total = 0.0
        for ol in range(outer_loop):
            idx = sampler.indices(batch_real, gen).view(classes, batch_real)
            d = (aug.draw(strategy, classes, generator=gen, device=device, per_group_op=True)
                 if strategy else None)
            loss = None
            if batched:
                xr = real_std(idx.flatten())
                xr = _layout(aug.apply(xr, d, y_real), cl) if d is not None else xr
                grads = _class_gradients(network, xr, y_real, classes)
            for c in range(classes):
                xs = syn[c * ipc:(c + 1) * ipc]
                xs = _layout(aug.apply(xs, d, c), cl) if d is not None else xs
                if batched:
                    g_real = grads[c]
                else:
                    xr = real_std(idx[c])
                    xr = _layout(aug.apply(xr, d, c), cl) if d is not None else xr
                    yr = torch.full((len(xr),), c, device=device, dtype=torch.long)
                    g_real = [g.detach() for g in _mean_grad(real, xr, yr, matched, rows if rowwise else None)]
                g_syn = _mean_grad(ce, xs, y_syn[c * ipc:(c + 1) * ipc], matched, rows, create_graph=True)
                term = _distance(g_syn, g_real)
                loss = term if loss is None else loss + term
            opt_img.zero_grad(set_to_none=True)
            loss.backward()
            opt_img.step()
            total += _finite(loss, it, method.upper())
            if ol == outer_loop - 1:
                break
            _train_network(network, opt_net, syn.detach().clone(), y_syn, inner_loop, batch_train, strategy, gen,
                           cl, rows, fwd)
        history.append(total / outer_loop)
        if it == start and compile:
            compile_seconds = time.perf_counter() - t0  # every compile happens in the first iteration
        seconds += time.perf_counter() - t0
        _end_iteration(ckpt, it, iterations, syn, opt_img, gen, history, seconds, callback)
    return _finish(syn, y_syn, method, ipc, history, seconds, mean, std, config, compile_seconds)


def _train_network(network: nn.Module, opt: torch.optim.Optimizer, xs: torch.Tensor, ys: torch.Tensor, epochs: int,
                   batch: int, strategy: str | None, gen: torch.Generator, cl: bool, rows: int | None,
                   forward: Callable = _forward) -> None:
    """DC's inner loop: ``epochs`` epochs of SGD on the (detached) synthetic set in shuffled batches of ``batch``,
    each batch DSA-augmented (non-Siamese) when there is a ``strategy``; each batch's mean cross-entropy is
    differentiated in pieces of ``rows`` images (:func:`~poisonbook.condense._core._mean_backward`);
    ``forward(network, x)``: the network's forward pass (eager or compiled)."""
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=gen).to(xs.device)
        for i in range(0, len(order), batch):
            b = order[i:i + batch]
            xb = _layout(xs[b], cl)
            if strategy:
                xb = _layout(aug.augment(xb, strategy, gen), cl)
            opt.zero_grad(set_to_none=True)
            _mean_backward(lambda a, t: F.cross_entropy(forward(network, a), t), xb, ys[b], rows)
            opt.step()


def _class_gradients(network: nn.Module, xr: torch.Tensor, yr: torch.Tensor, classes: int) -> list[list]:
    """Per class c, the parameter gradients (of the parameters with >= 2 dimensions) of the mean
    cross-entropy on class c's rows of ``xr``, all classes in one ``vmap``-ed pass (exact for a
    per-sample network)."""
    from torch.func import functional_call, grad, vmap

    names = [k for k, p in network.named_parameters() if p.ndim >= 2]
    params = {k: p.detach() for k, p in network.named_parameters()}
    buffers = dict(network.named_buffers())

    def class_loss(p, xc, yc):
        return F.cross_entropy(functional_call(network, (p, buffers), (xc,)), yc)

    n = len(xr) // classes
    g = vmap(grad(class_loss), in_dims=(None, 0, 0))(params, xr.view(classes, n, *xr.shape[1:]),
                                                      yr.view(classes, n))
    return [[g[k][c] for k in names] for c in range(classes)]


def dsa(x: torch.Tensor, y: torch.Tensor, ipc: int, *, strategy: str = aug.STRATEGY, **kwargs) -> Condensed:
    """DSA (Zhao & Bilen 2021a, "Dataset Condensation with Differentiable Siamese Augmentation").

    :func:`dc` with Siamese augmentation: the same random transform ``A_{w_c}`` on the real and
    the synthetic batch of class c in every matching step, and random (non-Siamese) DSA
    augmentation of the network's training batches. ``strategy`` default
    ``"color_crop_cutout_flip_scale_rotate"``; use ``augment.strategy_for(dataset)`` (no flip for
    digits). All other arguments and defaults are :func:`dc`'s (1,000 iterations, image lr 0.1,
    momentum 0.5, network lr 0.01, 256 real images per class).
    """
    if not strategy or not aug.parse_strategy(strategy):
        raise ValueError("dsa needs an augmentation strategy; use dc() for no augmentation")
    return dc(x, y, ipc, strategy=strategy, method="dsa", **kwargs)
