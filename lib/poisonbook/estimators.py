"""Robust estimators of a class's mean embedding for DM: the ``Calibrate`` step of RDM-DC.

Zheng & Li, "RDM-DC: Poisoning Resilient Dataset Condensation with Robust Distribution
Matching", UAI 2023 (``papers/000``):

* :func:`calibrated_mean`: Algorithm 4 (mean calibration) with Algorithm 5 (power method):
  centre the representations, find the top eigenvector ``v`` of their sample covariance, score
  each representation by ``|<r - r_bar, v>|``, drop the ``floor(3 eps N)`` highest scores and
  re-average. With it, :func:`poisonbook.condense.dm` is RDM-DC (Algorithm 3).
* :func:`trimmed_mean`, :func:`truncated_mean`, :data:`median`: the empirical robust aggregators
  of Sec. 4.5, with ``k = ceil(3 eps N)`` (Sec. 5.1) unless ``k`` is given.
* :data:`mean`: the plain mean (DM's estimator, eq. (2)).

Every estimator maps features ``(C, n, d)`` (C classes, n representations each) to ``(C, d)``,
batched over classes with tensor ops (no Python loop over samples; on a CPU the median's and the trimmed
mean's per-coordinate sort runs numpy's vectorised sort on each class, the classes split over threads), and
never forms the ``d x d`` covariance (``d_r = 2048`` for the ConvNet): the power method multiplies by
``X^T (X v)``.

``eps`` is the poisoned fraction **of the class** (Sec. 4.3): when all P poisons sit in one class
of ``N_c`` images, pass ``class_eps(P, N_c)``, not the dataset's rate ``P / N``.

Each estimator is a small callable object with a :meth:`Estimator.key` (its name and every
parameter), which :func:`poisonbook.condense.dm` puts in its checkpoint key, and an
:meth:`Estimator.estimate` that also returns the dropped positions (for the per-iteration report
of the poisoned deviation, :func:`deviation_parts`). Randomness (the power method's start) comes
from the ``generator`` the caller passes: DM passes its run's generator, so a resumed run is
bit-identical.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from . import checks

__all__ = ["Estimate", "Estimator", "Mean", "Median", "TrimmedMean", "TruncatedMean", "CalibratedMean",
           "mean", "median", "trimmed_mean", "truncated_mean", "calibrated_mean", "class_eps",
           "power_method", "deviation_parts", "drop_count", "ESTIMATORS"]

#: The largest class poisoning fraction: 3 eps must stay below 1 (Algorithm 4 drops 3 eps N).
EPS_MAX = 1.0 / 3.0


@dataclass
class Estimate:
    """``mean`` (C, d); ``dropped`` (C, k) positions (into the n axis) of the dropped rows, or None
    when the estimator drops no whole rows (mean, median, trimmed mean)."""

    mean: torch.Tensor
    dropped: torch.Tensor | None = None


def class_eps(poisons: int, class_size: int) -> float:
    """The poisoned fraction of a class, ``poisons / class_size`` (RDM-DC Sec. 4.3).

    With 1% of a 10-class dataset poisoned and all poisons in one class, this is 10%, and the drop
    rate of Algorithm 4 is computed from it, not from the dataset's 1%.
    """
    class_size = checks.integer(class_size, "class_size", low=1, where="estimators.class_eps")
    poisons = checks.integer(poisons, "poisons", low=0, high=class_size, where="estimators.class_eps")
    return poisons / class_size


def _eps(eps, where: str) -> float:
    return checks.number(eps, "eps (poisoned fraction of the class)", low=0.0, high=EPS_MAX, high_open=True,
                         where=where)


def drop_count(eps: float, n: int, rounding: str = "floor") -> int:
    """``floor(3 eps n)`` (Algorithm 4) or ``ceil(3 eps n)`` (the baselines' k, Sec. 5.1)."""
    x = 3.0 * eps * n
    # 3 * 0.01 * 100 is 3.0000000000000004 in floating point; round that away before floor/ceil
    x = round(x) if abs(x - round(x)) < 1e-9 else x
    return int(math.floor(x) if rounding == "floor" else math.ceil(x))


def _features(f, where: str) -> torch.Tensor:
    if not isinstance(f, torch.Tensor) or f.ndim != 3:
        raise checks.BadInput(f"{where}: features must be a tensor (C, n, d), got "
                              f"{tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}")
    if not f.is_floating_point():
        raise checks.BadInput(f"{where}: features must be floating point, got {f.dtype}")
    # DM calls an estimator on 10 x 256 x 2,048 features every iteration: a sum (0.4 ms) is finite only if every
    # value is, so the full check (a mask, 10 ms) runs only when the sum is not: a bad value, or an overflow.
    return f if torch.isfinite(f.sum()) else checks.finite(f, "features", where=where)


class Estimator:
    """Base class: ``est(features) -> (C, d)``; ``est.estimate(features, generator)`` also gives the
    dropped rows."""

    name = "estimator"

    def params(self) -> dict:
        return {}

    def key(self) -> dict:
        """Name and every parameter: what a checkpoint key must contain."""
        return {"estimator": self.name, **self.params()}

    def check_n(self, n: int) -> int:
        """Raise when ``n`` representations per class are too few; return the number of rows dropped."""
        checks.integer(n, "n (representations per class)", low=1, where=self.name)
        return 0

    def estimate(self, features: torch.Tensor, generator: torch.Generator | None = None) -> Estimate:
        raise NotImplementedError

    def __call__(self, features: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.estimate(features, generator).mean

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"


class Mean(Estimator):
    """The plain mean over the n representations (DM, RDM-DC eq. (2))."""

    name = "mean"

    def estimate(self, features, generator=None):
        return Estimate(_features(features, self.name).mean(dim=1))


def _sorted_per_coordinate(f: torch.Tensor) -> torch.Tensor:
    """(C, d, n): each class's n values of every coordinate, sorted ascending (what the median and the trimmed
    mean read their order statistics from).

    On a CPU, numpy sorts float rows with vectorised sorting networks (x86-simd-sort, numpy >= 2) where
    ``torch.sort`` and ``torch.topk`` select element by element: at 10 x 256 x 2,048 on 2 threads the whole
    sort, transpose included, took 15-20 ms against 109 ms for ``torch.sort`` and 36 ms for the one ``topk``
    the median needed. numpy sorts on one thread and releases the GIL, so the classes are split over
    ``torch.get_num_threads()`` threads, each transposing and sorting its own classes. Elsewhere (a GPU, a
    half-precision dtype) ``torch.sort``. Sorting is exact: the same values in the same order either way."""
    if f.device.type != "cpu" or f.dtype not in (torch.float32, torch.float64):
        return f.transpose(1, 2).sort(dim=-1).values
    src = f.detach().numpy()
    out = np.empty((src.shape[0], src.shape[2], src.shape[1]), dtype=src.dtype)

    def work(classes):
        for c in classes:
            out[c] = src[c].T
            out[c].sort(axis=-1)

    parts = [p for p in np.array_split(np.arange(src.shape[0]), max(1, torch.get_num_threads())) if len(p)]
    if len(parts) == 1:
        work(parts[0])
    else:
        with ThreadPoolExecutor(len(parts)) as pool:
            list(pool.map(work, parts))
    return torch.from_numpy(out)


class Median(Estimator):
    """Coordinate-wise median (RDM-DC Sec. 4.5); for even n the average of the two middle values."""

    name = "median"

    def estimate(self, features, generator=None):
        rows = _sorted_per_coordinate(_features(features, self.name))
        n = rows.shape[-1]
        if n % 2:
            return Estimate(rows[..., n // 2])
        return Estimate(rows[..., n // 2 - 1:n // 2 + 1].mean(dim=-1))


class _Dropping(Estimator):
    """An estimator that drops k of n (k fixed, or from the class fraction eps)."""

    rounding = "ceil"

    def __init__(self, k: int | None = None, *, eps: float | None = None):
        if (k is None) == (eps is None):
            raise checks.BadInput(f"{self.name}: give exactly one of k (values to drop) or eps (poisoned "
                                  f"fraction of the class; k = {self.rounding}(3 eps N))")
        self.k = None if k is None else checks.integer(k, "k", low=0, where=self.name)
        self.eps = None if eps is None else _eps(eps, self.name)

    def params(self):
        if self.k is not None:
            return {"k": self.k}
        return {"eps": self.eps, "k_rule": f"{self.rounding}(3 eps N)"}

    def drops(self, n: int) -> int:
        return self.k if self.k is not None else drop_count(self.eps, n, self.rounding)

    def check_n(self, n):
        super().check_n(n)
        k, left = self.drops(n), n - self._removed(self.drops(n))
        if left < self._min_left:
            raise checks.BadInput(f"{self.name}: dropping {k} of n = {n} representations per class leaves "
                                  f"{left}; it needs at least {self._min_left}: use more real samples per "
                                  f"class (batch) "
                                  f"or a smaller eps/k")
        return k

    _min_left = 1

    def _removed(self, k: int) -> int:
        return k


class TrimmedMean(_Dropping):
    """Coordinate-wise trimmed mean (RDM-DC Sec. 4.5): per coordinate drop the ``ceil(k/2)`` largest and
    ``ceil(k/2)`` smallest values and average the rest (``ceil`` so that an odd or unit k still drops)."""

    name = "trimmed_mean"

    def _removed(self, k):
        return 2 * math.ceil(k / 2)

    def estimate(self, features, generator=None):
        f = _features(features, self.name)
        n = f.shape[1]
        h = math.ceil(self.check_n(n) / 2)
        if h == 0:
            return Estimate(f.mean(dim=1))
        return Estimate(_sorted_per_coordinate(f)[..., h:n - h].mean(dim=-1))


def _mean_without(f: torch.Tensor, scores: torch.Tensor, k: int) -> Estimate:
    """Drop the k rows of highest score per class (ties: lower position first) and average the rest."""
    if k == 0:
        return Estimate(f.mean(dim=1), scores.new_zeros((f.shape[0], 0), dtype=torch.long))
    order = scores.sort(dim=1, descending=True, stable=True).indices
    dropped = order[:, :k]
    keep = torch.ones_like(scores, dtype=torch.bool).scatter_(1, dropped, False)
    w = keep.to(f.dtype).unsqueeze(1)  # (C, 1, n): one batched product, not an (n, d) temporary per class
    return Estimate(torch.bmm(w, f).squeeze(1) / w.sum(dim=-1), dropped)


class TruncatedMean(_Dropping):
    """Truncated mean (RDM-DC Sec. 4.5): drop the k rows farthest (l2) from the mean; re-average."""

    name = "truncated_mean"

    def estimate(self, features, generator=None):
        f = _features(features, self.name)
        k = self.check_n(f.shape[1])
        dist = (f - f.mean(dim=1, keepdim=True)).norm(dim=-1)
        return _mean_without(f, dist, k)


def power_method(x_centred: torch.Tensor, iterations: int, generator: torch.Generator | None = None,
                 v0: torch.Tensor | None = None) -> torch.Tensor:
    """Top eigenvector of each class's covariance ``X^T X / (n - 1)`` by RDM-DC's Algorithm 5, batched.

    ``x_centred`` (C, n, d); ``v ~ N(0, I)`` drawn from ``generator`` (on the CPU, then moved, so the
    draw is the same on every device) unless ``v0`` (C, d) is given; then ``iterations`` times
    ``v = Sigma v; v = v / ||v||`` with ``Sigma = X^T X / (n - 1)``, never the d x d matrix. Returns (C, d)
    unit vectors.

    When n < d the same iterates are computed in the n-dimensional dual: with ``u_t = X v_t``, ``v_{t+1}`` is
    parallel to ``X^T u_t`` and ``u_{t+1}`` to ``K u_t`` for the Gram matrix ``K = X X^T`` (C, n, n), formed
    once. So ``v_T`` is parallel to ``X^T K^(T-1) X v_0``: a step costs n^2 instead of 2 n d (DM's real
    batches: n = 256 samples against d = 2,048 features), equal to the primal loop up to rounding (tested).

    The vectors are kept as rows (C, 1, .) and multiplied from the left (``v^T X^T``, ``u^T K``, ``u^T X``;
    K is symmetric): the same products, but a CPU's batched GEMM runs a row times a matrix many times faster
    than a matrix times a column. At DM's sizes, 2 threads: ``u^T X`` 0.4 ms against 10.4 ms for ``X^T u``,
    ``u^T K`` 0.06 against 0.44 ms; the whole method 53 -> 25 ms.
    """
    c, n, d = x_centred.shape
    if v0 is None:
        v0 = torch.randn(c, d, generator=generator)
    v = v0.to(device=x_centred.device, dtype=x_centred.dtype).unsqueeze(1)   # (C, 1, d): rows
    xt = x_centred.transpose(1, 2)                                           # (C, d, n), a view
    tiny = torch.finfo(v.dtype).tiny
    if n >= d:  # the primal loop of Algorithm 5
        v = v / v.norm(dim=-1, keepdim=True)
        for _ in range(iterations):
            v = torch.bmm(torch.bmm(v, xt), x_centred)                   # (X^T X v)^T
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(tiny)
        return v.squeeze(1)
    u = torch.bmm(v, xt)                                                 # (C, 1, n): (X v_0)^T
    gram = torch.bmm(x_centred, xt)                                      # (C, n, n)
    for _ in range(iterations - 1):
        u = torch.bmm(u, gram)                                           # (K u)^T, K symmetric
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(tiny)             # the scale of u leaves v's direction
    v = torch.bmm(u, x_centred).squeeze(1)                               # (X^T u)^T
    return v / v.norm(dim=-1, keepdim=True).clamp_min(tiny)


class CalibratedMean(_Dropping):
    """Mean calibration, RDM-DC Algorithm 4 with Algorithm 5's power method (``Calibrate`` of Algorithm 3).

    1. ``r_bar`` = mean, ``Sigma_r = (1/(N-1)) sum (r - r_bar)(r - r_bar)^T`` (never formed);
    2. ``v`` = top eigenvector of ``Sigma_r`` by ``power_iterations`` steps of Algorithm 5 (the paper:
       "a few iterations"; the chapter measures how many are needed) from ``v ~ N(0, I)`` drawn from
       the caller's generator;
    3. score ``|<r - r_bar, v>|``; 4. drop the ``floor(3 eps N)`` highest; 5. re-average.

    ``eps`` is the poisoned fraction of the class (:func:`class_eps`). ``k`` may replace ``eps``.
    """

    name = "calibrated_mean"
    rounding = "floor"
    _min_left = 1

    def __init__(self, eps: float | None = None, power_iterations: int = 50, *, k: int | None = None):
        super().__init__(k, eps=eps)
        self.power_iterations = checks.integer(power_iterations, "power_iterations", low=1, where=self.name)

    def params(self):
        return {**super().params(), "power_iterations": self.power_iterations}

    def check_n(self, n):
        if n < 2:
            raise checks.BadInput(f"{self.name}: the sample covariance needs n >= 2 representations "
                                  f"per class, "
                                  f"got {n}")
        return super().check_n(n)

    def direction(self, features, generator=None) -> torch.Tensor:
        f = _features(features, self.name)
        return power_method(f - f.mean(dim=1, keepdim=True), self.power_iterations, generator)

    def estimate(self, features, generator=None):
        f = _features(features, self.name)
        k = self.check_n(f.shape[1])
        xc = f - f.mean(dim=1, keepdim=True)
        v = power_method(xc, self.power_iterations, generator)
        scores = torch.bmm(v.unsqueeze(1), xc.transpose(1, 2)).squeeze(1).abs()  # row form: power_method
        return _mean_without(f, scores, k)


mean = Mean()
median = Median()


def trimmed_mean(k: int | None = None, *, eps: float | None = None) -> TrimmedMean:
    """:class:`TrimmedMean` dropping ``k`` values per coordinate, or ``ceil(3 eps N)`` (eps of the class)."""
    return TrimmedMean(k, eps=eps)


def truncated_mean(k: int | None = None, *, eps: float | None = None) -> TruncatedMean:
    """:class:`TruncatedMean` dropping ``k`` rows, or ``ceil(3 eps N)`` from the class fraction eps."""
    return TruncatedMean(k, eps=eps)


def calibrated_mean(eps: float | None = None, power_iterations: int = 50, *,
                    k: int | None = None) -> CalibratedMean:
    """:class:`CalibratedMean` (RDM-DC, Algorithm 4): drop ``floor(3 eps N)`` by the top-eigenvector score."""
    return CalibratedMean(eps, power_iterations, k=k)


#: Name -> constructor from the class fraction eps (the five estimators of RDM-DC Table 2).
ESTIMATORS = {
    "mean": lambda eps, **kw: mean,
    "median": lambda eps, **kw: median,
    "trimmed_mean": lambda eps, **kw: trimmed_mean(eps=eps),
    "truncated_mean": lambda eps, **kw: truncated_mean(eps=eps),
    "calibrated_mean": lambda eps, **kw: calibrated_mean(eps, **kw),
}


def deviation_parts(features: torch.Tensor, estimate: torch.Tensor, is_poison: torch.Tensor,
                    dropped: torch.Tensor | None = None, clean_mean: torch.Tensor | None = None) -> dict:
    """Split an estimate's error into the poisoned deviation (Definition 4.1) and the clean parts.

    ``features`` (C, n, d), ``estimate`` (C, d), ``is_poison`` (C, n) bool, ``dropped`` (C, k) positions
    removed by the estimator (None: nothing removed), ``clean_mean`` (C, d) the population mean of the
    clean distribution when known (mixtures), else None. With K kept rows, ``mu_c`` the mean of all
    clean rows of the batch and ``mu`` the clean population mean, for a row-dropping estimator

        estimate - mu = (mu_c - mu)                                   sampling floor
                      + (1/K) sum_{kept clean} (r - mu_c)             drop bias
                      + (1/K) sum_{kept poisons} (r - mu_c)           poisoned deviation

    exactly. For estimators that drop no rows (median, trimmed mean) the last two are not separable
    and ``"drop_bias"`` holds ``estimate - mu_c`` with ``"poisoned"`` None. Returns per-class l2 norms
    (C,) for ``"total"`` (``estimate - mu``, or ``- mu_c`` without ``clean_mean``), ``"floor"``,
    ``"drop_bias"``, ``"poisoned"``, and ``"poisons_kept"`` (count per class).
    """
    p = is_poison.to(features.dtype)
    clean = 1 - p
    mu_c = (features * clean.unsqueeze(-1)).sum(1) / clean.sum(1, keepdim=True).clamp_min(1)
    ref = mu_c if clean_mean is None else clean_mean
    out = {"total": (estimate - ref).norm(dim=-1),
           "floor": (mu_c - ref).norm(dim=-1) if clean_mean is not None else None}
    keep = torch.ones_like(p, dtype=torch.bool)
    if dropped is not None:
        keep = keep.scatter(1, dropped, False)
    if dropped is None and not torch.allclose(estimate, features.mean(1), atol=1e-6, rtol=1e-5):
        out.update(drop_bias=(estimate - mu_c).norm(dim=-1), poisoned=None, poisons_kept=None)
        return out
    kf = keep.to(features.dtype)
    big_k = kf.sum(1, keepdim=True)
    centred = features - mu_c.unsqueeze(1)
    out["drop_bias"] = ((centred * (kf * clean).unsqueeze(-1)).sum(1) / big_k).norm(dim=-1)
    out["poisoned"] = ((centred * (kf * p).unsqueeze(-1)).sum(1) / big_k).norm(dim=-1)
    out["poisons_kept"] = (kf * p).sum(1)
    return out
