"""Shared pieces of :mod:`poisonbook.condense`: defaults, losses, results and the run machinery."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import checks, models
from ..cache import Checkpoint, fingerprint
from ..data import ClassSampler
from ._norm import fast_norms

#: (outer_loop, inner_loop) of DC/DSA by images per class (authors' code). ``outer_loop`` is the
#: number of synthetic-image updates per network initialisation (the paper's inner loop T);
#: ``inner_loop`` the number of network-training epochs on the synthetic set between two of them.
DC_LOOPS: dict[int, tuple[int, int]] = {1: (1, 1), 10: (10, 50), 50: (50, 10)}

#: DM defaults (Zhao & Bilen 2021b; RDM-DC Sec. 5.1).
DM_DEFAULTS = dict(iterations=20_000, lr=1.0, momentum=0.5, batch_real=256, width=128)
#: DC/DSA defaults (Zhao et al. 2021; Zhao & Bilen 2021a).
DC_DEFAULTS = dict(iterations=1_000, lr_img=0.1, momentum=0.5, lr_net=0.01, batch_real=256,
                   batch_train=256, width=128)
#: Evaluation protocol (DC/DSA/DM): SGD lr 0.01, momentum 0.9, weight decay 5e-4, lr x0.1 at half
#: the epochs, batch 256; 300 epochs without augmentation (DC), 1,000 with DSA augmentation (DSA, DM).
EVAL_DEFAULTS = dict(lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=256, epochs_dc=300,
                     epochs_dsa=1000, width=128)

INITS = ("noise", "real")

#: A real-mean estimator: features ``(C, n, d)`` (C classes, n real images each) -> ``(C, d)``.
Estimator = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- small pieces


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of images ``x`` (N, C, H, W), each of shape (C,).

    The reference code standardises with fixed per-dataset constants that are exactly these
    statistics of the training set (e.g. MNIST 0.1307 / 0.3081).
    """
    x = checks.images(x, "x", domain=None, where="channel_stats")
    if x.shape[0] * x.shape[2] * x.shape[3] < 2:
        raise checks.BadInput(f"channel_stats: x must hold at least 2 pixel values per channel for a "
                              f"standard deviation, got shape {tuple(x.shape)}")
    xd = x.double()
    return xd.mean(dim=(0, 2, 3)).float(), xd.std(dim=(0, 2, 3)).clamp_min(1e-8).float()


class Standardize(nn.Module):
    """``(x - mean) / std`` per channel, as a module (in front of a network trained on standardised data)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _standardizer(x: torch.Tensor, stats) -> tuple[torch.Tensor, torch.Tensor]:
    if stats is None:
        mean, std = channel_stats(x)
    else:
        mean, std = (torch.as_tensor(s, dtype=torch.float32).flatten() for s in stats)
        if mean.shape != (x.shape[1],) or std.shape != (x.shape[1],):
            raise ValueError(f"stats must be (mean, std) with {x.shape[1]} values each (one per channel), "
                             f"got shapes {tuple(mean.shape)} and {tuple(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError("stats must be finite with std > 0")
    return mean.to(x.device).view(1, -1, 1, 1), std.to(x.device).view(1, -1, 1, 1)


def feature_mean(features: torch.Tensor) -> torch.Tensor:
    """The default real-mean estimator of DM: the plain mean over the samples, ``(C, n, d) -> (C, d)``.

    With it, :func:`dm_loss` is eq. (2) of RDM-DC (papers/000) for one network draw.
    """
    return features.mean(dim=-2)


def per_class(estimator: Callable[[torch.Tensor], torch.Tensor]) -> Estimator:
    """Turn an unbatched estimator ``(n, d) -> (d,)`` into a batched one ``(C, n, d) -> (C, d)``.

    A loop over the C classes (never over samples); use it for estimators that cannot
    work on a leading class dimension (e.g. a spectral filter written for one class).
    """
    def batched(features: torch.Tensor) -> torch.Tensor:
        return torch.stack([estimator(f) for f in features.unbind(0)])

    batched.__name__ = f"per_class({getattr(estimator, '__name__', 'estimator')})"
    batched.key = lambda: {"per_class": callable_key(estimator)}
    return batched


def callable_key(fn) -> dict | str:
    """What a checkpoint key records of a pluggable callable (an estimator, a real-batch loss).

    An object with ``key()`` (the estimators of :mod:`poisonbook.estimators`, :func:`per_class`)
    gives its name and every parameter; a plain function its qualified name and a hash of its
    source and of the values it closes over, so two lambdas, or one function with two bound
    parameters, never share a checkpoint.
    """
    if callable(getattr(fn, "key", None)):
        return fn.key()
    import hashlib
    import inspect

    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        src = repr(fn)
    cells = [repr(c.cell_contents) for c in (getattr(fn, "__closure__", None) or ())]
    code = getattr(fn, "__code__", None)  # two lambdas on one source line differ in their code
    code = repr((code.co_code, code.co_consts, code.co_names)) if code is not None else ""
    digest = hashlib.sha256("\n".join([src, code, *cells, repr(getattr(fn, "__defaults__", None))]).encode())
    return {"name": getattr(fn, "__qualname__", type(fn).__name__), "source": digest.hexdigest()[:16]}


def estimate_real(estimator, features: torch.Tensor, generator: torch.Generator | None = None):
    """``(target (C, d), dropped (C, k) or None)``: the real-side estimate of one DM iteration.

    An estimator with ``estimate(features, generator)`` (:mod:`poisonbook.estimators`) draws its
    randomness from ``generator`` (the run's) and reports the rows it dropped; a plain function
    ``(C, n, d) -> (C, d)`` is called as before.
    """
    c, _, d = features.shape
    name = getattr(estimator, "__name__", repr(estimator))
    if callable(getattr(estimator, "estimate", None)):
        est = estimator.estimate(features, generator)
        return _check_estimate(est.mean, c, d, name), est.dropped
    return _check_estimate(estimator(features), c, d, name), None


def _check_estimate(est: torch.Tensor, c: int, d: int, name: str) -> torch.Tensor:
    if not isinstance(est, torch.Tensor) or tuple(est.shape) != (c, d):
        raise ValueError(f"estimator {name} must map real features (C, n, d) = (.., .., {d}) to (C, d) = "
                         f"({c}, {d}), got {getattr(est, 'shape', type(est).__name__)}; wrap an "
                         f"(n, d) -> (d,) estimator with condense.per_class")
    if not torch.isfinite(est).all():
        raise ValueError(f"estimator {name} returned non-finite values")
    return est


def dm_loss(real_features: torch.Tensor, syn_features: torch.Tensor,
            estimator: Estimator = feature_mean, generator: torch.Generator | None = None) -> torch.Tensor:
    """DM matching loss for one network draw (Zhao & Bilen 2021b; RDM-DC eq. (2), Algorithm 3).

    ``sum_c || estimator(real_features[c]) - mean_j syn_features[c, j] ||_2^2`` with
    ``real_features`` of shape (C, n, d) and ``syn_features`` of shape (C, m, d). The synthetic
    side is always the plain mean (eq. (2)); only the real side's estimator is pluggable
    (Algorithm 3's ``Calibrate``). The loss is a *sum* over classes, as in the reference.

    The estimator contract: a function of a tensor (C, n, d) returning (C, d), the estimate of
    each class's mean embedding computed independently per class; it is called on detached
    features (no gradient flows through it), so it need not be differentiable. ``generator``
    feeds a randomised estimator (:func:`estimate_real`).
    """
    checks.finite(real_features, "real_features", where="dm_loss")
    checks.finite(syn_features, "syn_features", where="dm_loss")
    if real_features.ndim != 3 or syn_features.ndim != 3:
        raise ValueError(f"dm_loss expects real (C, n, d) and synthetic (C, m, d) features, got "
                         f"{tuple(real_features.shape)} and {tuple(syn_features.shape)}")
    c, _, d = real_features.shape
    if syn_features.shape[0] != c or syn_features.shape[2] != d:
        raise ValueError(f"real features {tuple(real_features.shape)} and synthetic features "
                         f"{tuple(syn_features.shape)} disagree on classes or dimension")
    target, _ = estimate_real(estimator, real_features.detach(), generator)
    return _match(target, syn_features)


def _match(target: torch.Tensor, syn_features: torch.Tensor) -> torch.Tensor:
    return ((target - syn_features.mean(dim=1)) ** 2).sum()


def match_distance(g_syn: Sequence[torch.Tensor], g_real: Sequence[torch.Tensor],
                   eps: float = 1e-6) -> torch.Tensor:
    """DC's layer-wise gradient matching distance D (Zhao et al. 2021, the distance of Algorithm 1's loss).

    For every parameter gradient with at least 2 dimensions, reshape to (output channels, -1)
    and sum over output channels ``1 - <a_i, b_i> / (||a_i|| ||b_i|| + eps)``; 1-D parameters
    (biases, normalisation weights) are skipped; the result is the sum over layers. ``eps`` =
    1e-6 as in the reference; with ``eps=0`` identical non-zero gradients give exactly 0 (up to
    rounding).
    """
    g_syn, g_real = list(g_syn), list(g_real)
    if len(g_syn) != len(g_real):
        raise ValueError(f"match_distance: {len(g_syn)} synthetic but {len(g_real)} real gradients")
    checks.number(eps, "eps", low=0.0, where="match_distance")
    for i, (a, b) in enumerate(zip(g_syn, g_real)):
        checks.finite(a, f"synthetic gradient {i}", where="match_distance")
        checks.finite(b, f"real gradient {i}", where="match_distance")
        if a.shape != b.shape:
            raise ValueError(f"match_distance: gradient {i} has shapes {tuple(a.shape)} (synthetic) and "
                             f"{tuple(b.shape)} (real)")
    return _distance(g_syn, g_real, eps)


def _distance(g_syn, g_real, eps: float = 1e-6) -> torch.Tensor:
    """:func:`match_distance` without its input checks: :func:`dc` calls it for every class and image update on
    gradients of its own networks (a non-finite value surfaces in the checked loss of the update)."""
    total = None
    for a, b in zip(g_syn, g_real):
        if a.ndim < 2:
            continue
        a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        cos = (a2 * b2).sum(-1) / (a2.norm(dim=-1) * b2.norm(dim=-1) + eps)
        term = (1 - cos).sum()
        total = term if total is None else total + term
    if total is None:
        device = g_syn[0].device if g_syn else None
        return torch.zeros((), device=device)
    return total


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default real-batch loss of DC/DSA: ``cross_entropy(model(x), y)`` (GUARD replaces it)."""
    return F.cross_entropy(model(x), y)


#: A mean over the rows of per-row terms: :func:`dc` may take its gradient piece by piece (:func:`_mean_grad`).
cross_entropy_loss.rowwise_mean = True


def _forward(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return network(x)


def _embed(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return network.embed(x)


_COMPILED: dict = {}


def _compiled(fn: Callable, compile: bool) -> Callable:
    """``fn(network, x)`` eager, or one ``torch.compile`` of it per process (a fresh network of the same
    architecture reuses the compiled code: its parameters are inputs of the graph)."""
    if not compile:
        return fn
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]


# --------------------------------------------------------------------------- results


@dataclass
class Condensed:
    """A synthetic set and how it was made.

    ``x`` (C*ipc, channels, H, W) in the caller's coordinates (not clipped), ``y`` the class-major
    labels; ``loss`` the matching loss per iteration; ``seconds`` the time spent in the loop
    (over all resumed parts); ``iterations`` done; ``stats`` the (mean, std) used to standardise;
    ``compile_seconds`` the first iteration's seconds when compiling (``dm(..., compile=True)``: both
    compiles happen in it).
    """

    x: torch.Tensor
    y: torch.Tensor
    method: str
    ipc: int
    loss: list[float]
    seconds: float
    iterations: int
    stats: tuple[torch.Tensor, torch.Tensor]
    config: dict = field(default_factory=dict)
    #: seconds of the first call of a ``torch.compile``'d embedding (its one-off compilation; part of ``seconds``)
    compile_seconds: float = 0.0

    @property
    def seconds_per_iteration(self) -> float:
        return self.seconds / max(self.iterations, 1)


@dataclass
class Evaluation:
    """Test accuracies of ``len(accuracies)`` networks trained on one synthetic set.

    ``predictions`` (models, n_probe): each network's predicted label for every probe sample
    (Part II's attack success), or None; ``models`` the trained networks (taking inputs in the
    caller's coordinates) when asked for. ``std`` is the population standard deviation
    (``np.std``, as the reference code reports it).
    """

    accuracies: list[float]
    seconds: float
    predictions: torch.Tensor | None = None
    models: list[nn.Module] | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracies))


# --------------------------------------------------------------------------- shared machinery


def _classes(y: torch.Tensor, num_classes, where: str) -> int:
    """``num_classes`` (validated) or one more than the largest label."""
    if num_classes is None:
        return int(y.max()) + 1
    return checks.integer(num_classes, "num_classes", low=1, where=where)


def _labelled(x, y, num_classes, where, name="x"):
    """Images (any range: they may be standardised) and their labels, checked; returns (x, y, classes)."""
    x = checks.images(x, name, domain=None, where=where)
    y = checks.labels(y, f"labels of {name}", n=len(x), where=where)
    classes = _classes(y, num_classes, where)
    return x, checks.labels(y, f"labels of {name}", num_classes=classes, where=where), classes


def _setup(x, y, ipc, init, num_classes, batch_real, stats, where):
    """Validate the real data; return (classes, sampler, mean, std, batch_real)."""
    x, y, classes = _labelled(x, y, num_classes, where)
    ipc = checks.integer(ipc, "ipc (images per class)", low=1, where=where)
    if init not in INITS:
        raise checks.BadInput(f"{where}: unknown init {init!r}; choose one of {', '.join(INITS)} ('noise': "
                              f"Gaussian noise N(0, I) in standardised coordinates; 'real': random real images)")
    sampler = ClassSampler(y, classes)  # raises for a class without images
    smallest = min(len(i) for i in sampler.by_class)
    if init == "real" and smallest < ipc:
        raise ValueError(f"{where}: init='real' needs {ipc} images of every class but one class has "
                         f"{smallest}")
    batch_real = min(checks.integer(batch_real, "batch_real", low=1, where=where), smallest)
    mean, std = _standardizer(x, stats)
    return classes, sampler, mean, std, batch_real, ipc


def _seed_from(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=gen))


def _fresh_net(factory: Callable[[], nn.Module], seed: int, device) -> nn.Module:
    """A network from ``factory`` whose initialisation depends only on ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = factory()
    if not isinstance(net, nn.Module):
        raise ValueError(f"net factory must return an nn.Module, got {type(net).__name__}")
    return net.to(device)


def _default_factory(shape, classes, width, depth=3):
    checks.integer(width, "width", low=1, where="ConvNet")
    checks.integer(depth, "depth", low=1, where="ConvNet")
    c, h, w = shape
    if h != w:
        raise ValueError(f"the ConvNet expects square images, got {h}x{w}")
    return lambda: models.ConvNet(in_channels=c, num_classes=classes, im_size=h, width=width, depth=depth)


def _init_images(xs_std, sampler, ipc, classes, init, gen, shape, device):
    if init == "noise":
        return torch.randn(classes * ipc, *shape, generator=gen).to(device)
    idx = sampler.indices(ipc, gen)
    return xs_std(idx)


def _start(x, mean, std, sampler, ipc, classes, init, seed, lr, momentum, ckpt, channels_last=False):
    """Shared start of DM and DC: the run's generator, the initial synthetic images (standardised,
    requiring grad) with their SGD optimiser, and the loss history; all restored from ``ckpt`` when
    it holds a saved state. Returns ``(real_std, gen, syn, opt, history, seconds, start_iteration)``
    where ``real_std(idx)`` gives standardised real images."""
    device = x.device

    def real_std(idx):
        return _layout((x[idx.to(device)] - mean) / std, channels_last)

    gen = torch.Generator().manual_seed(seed)
    syn = _init_images(real_std, sampler, ipc, classes, init, gen, tuple(x.shape[1:]), device)
    syn = _layout(syn.detach().clone(), channels_last).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=lr, momentum=momentum)
    history, seconds, start = [], 0.0, 0
    if ckpt is not None and (state := ckpt.load()) is not None:
        with torch.no_grad():
            syn.copy_(state["images"].to(device))
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        history, seconds, start = state["loss"], state["seconds"], state["iteration"]
    return real_std, gen, syn, opt, history, seconds, start


def _save(ckpt, syn, opt, gen, history, seconds, iteration) -> None:
    """The state :func:`_start` restores."""
    ckpt.save({"images": syn.detach().cpu(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
               "loss": history, "seconds": seconds, "iteration": iteration})


def _end_iteration(ckpt, it, iterations, syn, opt, gen, history, seconds, callback) -> None:
    """Checkpoint when due, then report the iteration to ``callback``."""
    if ckpt is not None and ckpt.due(it, iterations - 1):
        _save(ckpt, syn, opt, gen, history, seconds, it + 1)
    if callback is not None:
        callback(it, syn.detach(), history[-1])


def _finish(syn, y_syn, method, ipc, history, seconds, mean, std, config, compile_seconds=0.0) -> "Condensed":
    """The result in pixel coordinates (the loops run standardised), in the default memory layout."""
    out = (syn.detach() * std + mean).contiguous()
    return Condensed(out, y_syn.clone(), method, ipc, history, seconds, len(history),
                     (mean.flatten().cpu(), std.flatten().cpu()), config, compile_seconds)


def _layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``t`` in channels-last memory (same values; oneDNN's convolutions, pooling and norms run faster
    on it) when asked for and 4-D, else ``t`` itself. Differentiable."""
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.ndim == 4 else t


def _net_layout(network: nn.Module, channels_last: bool) -> nn.Module:
    """The network with its 4-D weights in channels-last memory (values unchanged) and its instance norms
    computed by :func:`~poisonbook.condense._norm.instance_norm` (PyTorch's channels-last ``group_norm`` is
    slow there, see that module), when asked for."""
    return fast_norms(network.to(memory_format=torch.channels_last)) if channels_last else network


#: Rows per piece of a large batch on a CPU (``chunk="auto"`` of :func:`dm`, :func:`dc`). At width 128 the
#: ConvNet's first feature map is 512 KB per image: 1.3 GB for DM's 2,560 real images, 134 MB for a DC class
#: batch of 256, 8 MB for 16 images. Most of what the pieces gain is the allocator: glibc maps every block above
#: its mmap threshold (at most 32 MiB) afresh and unmaps it when freed, so a whole batch's maps cost a minor page
#: fault per 4 KB page at every pass (1.6 million per eager DM iteration), while 8 MB pieces come back from the
#: heap; the rest is the cache (the norm, ReLU and pooling reread each map). On 2 AMD EPYC cores, DM's default
#: path ran 3.2x the eager one under glibc's default and 1.1x with ``MALLOC_MMAP_THRESHOLD_`` raised before Python
#: starts (``benchmarks/bench_allocator.py``). A GPU takes whole batches ("auto" is None there).
CPU_CHUNK = 16


def _chunk(chunk, device: torch.device, where: str) -> int | None:
    """The rows per piece of ``chunk`` ("auto", None for whole batches, or an int >= 1), checked once per run."""
    if chunk is None:
        return None
    if isinstance(chunk, str):
        if chunk != "auto":
            raise checks.BadInput(f"{where}: chunk must be 'auto', None or an integer >= 1, got {chunk!r}")
        return CPU_CHUNK if device.type == "cpu" else None
    return checks.integer(chunk, "chunk", low=1, where=where)


def _pieces(n: int, chunk: int | None) -> list[slice]:
    """Consecutive row slices of at most ``chunk`` rows covering ``range(n)`` (one slice for None)."""
    step = n if chunk is None else chunk
    return [slice(i, min(i + step, n)) for i in range(0, max(n, 1), max(step, 1))]


def _embed_pieces(embed: Callable, network: nn.Module, x: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """``embed(network, x)`` piece by piece (:data:`CPU_CHUNK`): the same features for a per-sample network
    (the caller checks :func:`_per_sample`), each piece's feature maps staying in the cache."""
    if chunk is None or len(x) <= chunk:
        return embed(network, x)
    return torch.cat([embed(network, x[s]) for s in _pieces(len(x), chunk)])


def _mean_grad(loss: Callable, x: torch.Tensor, y: torch.Tensor, params, chunk: int | None,
               create_graph: bool = False) -> list[torch.Tensor]:
    """The gradient in ``params`` of ``loss(x, y)``, a mean over the rows of per-row terms of a per-sample network,
    as ``sum_k (n_k / n) grad loss(x_k, y_k)`` over pieces of ``chunk`` rows: the same gradient up to float
    rounding (one piece: exactly ``grad loss(x, y)``)."""
    total = None
    for s in _pieces(len(x), chunk):
        piece = loss(x[s], y[s]) * ((s.stop - s.start) / len(x))
        g = torch.autograd.grad(piece, params, create_graph=create_graph)
        total = list(g) if total is None else [a + b for a, b in zip(total, g)]
    return total


def _mean_backward(loss: Callable, x: torch.Tensor, y: torch.Tensor, chunk: int | None) -> None:
    """``loss(x, y).backward()`` (a mean over the rows of a per-sample network) piece by piece, accumulating
    ``(n_k / n) grad loss(x_k, y_k)`` into the parameters' ``.grad`` (one piece: exactly the plain backward)."""
    for s in _pieces(len(x), chunk):
        (loss(x[s], y[s]) * ((s.stop - s.start) / len(x))).backward()


def _per_sample(network: nn.Module) -> bool:
    """Whether each sample's output depends on its own input only, as far as the layers show: no batch norm
    (the ConvNet's instance norm is per sample). Batching several classes or sets into one pass is exact then."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in network.modules())


def _fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    """The exact data part of a checkpoint key (SHA-256 of the images' and labels' bytes)."""
    return fingerprint(x, y)


def _make_checkpoint(checkpoint, config, every):
    if checkpoint is None or isinstance(checkpoint, Checkpoint):
        return checkpoint
    return Checkpoint(checkpoint, config, every=every)


def _finite(loss: torch.Tensor, it: int, method: str) -> float:
    return checks.finite_loss(loss, it, method, "lower the image learning rate")


def _progress(it_range, progress: bool, total: int, desc: str):
    if not progress:
        return it_range
    from tqdm.auto import tqdm

    return tqdm(it_range, initial=it_range.start, total=total, desc=desc, leave=False)
