"""The library's one validation module: every public entry point checks its input here.

Bad input stops with a :class:`BadInput` (a ``ValueError``) whose message names the argument,
what was wrong, and what is expected; divergence inside a loop stops with :func:`diverged`'s
``FloatingPointError`` naming the iteration. Nothing here converts silently except where the
function says so (``images`` casts float64 to float32; ``labels`` casts int32 to int64).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

__all__ = ["BadInput", "images", "features", "labels", "finite", "integer", "number", "fraction",
           "epsilon", "choice", "diverged", "finite_loss", "bound", "model_labels", "targets"]


class BadInput(ValueError):
    """An argument of a library function is invalid; the message names it and the fix."""


def _fail(where: str, name: str, problem: str) -> BadInput:
    return BadInput(f"{where}: {name} {problem}" if where else f"{name} {problem}")


def integer(value: Any, name: str, *, low: int | None = 0, high: int | None = None, where: str = "") -> int:
    """An int (numpy ints accepted, bools and floats not) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(where, name, f"must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]" if low is not None else f"<= {high}"
        raise _fail(where, name, f"must be an integer {bounds}, got {value}")
    return value


def number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, where: str = "") -> float:
    """A finite real number in the interval given by low/high (closed unless ``*_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise _fail(where, name, f"must be a finite number, got {value!r}")
    v = float(value)
    bad_low = low is not None and (v <= low if low_open else v < low)
    bad_high = high is not None and (v >= high if high_open else v > high)
    if bad_low or bad_high:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise _fail(where, name, f"must lie in {interval}, got {v:g}")
    return v


def fraction(value: Any, name: str, *, allow_zero: bool = True, allow_one: bool = False,
             where: str = "") -> float:
    """A fraction in [0, 1) by default (``allow_zero``/``allow_one`` open or close the ends)."""
    return number(value, name, low=0.0, high=1.0, low_open=not allow_zero, high_open=not allow_one, where=where)


def epsilon(value: Any, name: str = "epsilon", *, high: float = 1.0, allow_zero: bool = True,
            where: str = "") -> float:
    """A perturbation radius in pixel units of the [0, 1] domain: 0 <= eps <= high.

    A value above 1 is almost always a radius given in [0, 255] units (say 8 instead of 8/255).
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value)) \
            and float(value) > high and high <= 1.0:
        raise _fail(where, name, f"must be at most {high:g} in [0, 1] pixel units, got {float(value):g}; "
                                 f"a budget of 8/255 is written 8/255, not 8")
    return number(value, name, low=0.0, high=high, low_open=not allow_zero, where=where)


def choice(value: Any, name: str, options, *, where: str = "") -> Any:
    if value not in options:
        raise _fail(where, name, f"must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def finite(t: torch.Tensor, name: str, *, where: str = "") -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise _fail(where, name, f"must be a torch tensor, got {type(t).__name__}")
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise _fail(where, name, f"contains {int((~torch.isfinite(t)).sum())} NaN or infinite value(s)")
    return t


def images(x: Any, name: str = "images", *, domain: tuple[float, float] | None = (0.0, 1.0),
           channels: int | None = None, min_count: int = 1, where: str = "") -> torch.Tensor:
    """A finite float (N, C, H, W) tensor with N >= min_count, values inside ``domain``.

    float64 (or float16/bfloat16) input is returned as float32, the dtype of every model here.
    ``domain=None`` skips the range check (standardised inputs).
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise _fail(where, name, f"must be a tensor of shape (N, C, H, W), got "
                                 f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise _fail(where, name, f"must be floating point images in [0, 1], got dtype {x.dtype}; "
                                 f"convert uint8 images with x.float() / 255")
    if len(x) < min_count:
        raise _fail(where, name, f"must hold at least {min_count} image(s), got {len(x)}")
    if channels is not None and x.shape[1] != channels:
        raise _fail(where, name, f"must have {channels} channel(s), got {x.shape[1]}")
    finite(x, name, where=where)
    if domain is not None and len(x):
        lo, hi = float(x.min()), float(x.max())
        if lo < domain[0] - 1e-6 or hi > domain[1] + 1e-6:
            raise _fail(where, name, f"must lie in [{domain[0]:g}, {domain[1]:g}], got values in [{lo:g}, {hi:g}]"
                                     + ("; divide [0, 255] images by 255" if hi > 1.5 else ""))
    return x.float() if x.dtype != torch.float32 else x


def features(x: Any, name: str = "features", *, min_count: int = 1, where: str = "") -> torch.Tensor:
    """A finite float tensor of shape (n, ...) with n >= min_count (vectors, images, anything batched)."""
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise _fail(where, name, f"must be a tensor of shape (n, ...), got "
                                 f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise _fail(where, name, f"must be floating point, got dtype {x.dtype}")
    if len(x) < min_count:
        raise _fail(where, name, f"must hold at least {min_count} row(s), got {len(x)}")
    return finite(x, name, where=where)


def labels(y: Any, name: str = "labels", *, num_classes: int | None = None, n: int | None = None,
           where: str = "") -> torch.Tensor:
    """A 1-D integer label tensor (length ``n``) with values in [0, num_classes); returned as int64."""
    if not isinstance(y, torch.Tensor) or y.ndim != 1:
        raise _fail(where, name, f"must be a 1-D tensor, got "
                                 f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise _fail(where, name, f"must be integer class indices, got dtype {y.dtype}; use y.long()")
    if n is not None and len(y) != n:
        raise _fail(where, name, f"must hold one label per sample ({n}), got {len(y)}")
    if len(y):
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            expected = f"[0, {num_classes - 1}]" if num_classes is not None else "non-negative"
            raise _fail(where, name, f"must be class indices in {expected}, got values in [{lo}, {hi}]")
    return y.long()


def diverged(value: float, what: str, iteration: int, where: str, hint: str = "lower the learning rate") -> None:
    """Raise ``FloatingPointError`` if ``value`` is NaN or infinite (a diverged optimisation loop)."""
    if not math.isfinite(value):
        raise FloatingPointError(f"{where}: {what} became {value} at iteration {iteration}; {hint}")


def finite_loss(loss: torch.Tensor, iteration: int, where: str, hint: str = "lower the learning rate") -> float:
    """``loss.item()``, or ``FloatingPointError`` naming the iteration when it is not finite."""
    value = float(loss.detach())
    diverged(value, "the loss", iteration, where, hint)
    return value


# --- appended for issue 10 (library-wide validation) ---------------------------------------------


def bound(value: Any, name: str, *, where: str = "") -> float:
    """A real number that may be infinite but not NaN (an end point such as ``b = inf``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value)):
        raise _fail(where, name, f"must be a real number (inf allowed), got {value!r}")
    return float(value)


def model_labels(model: Any, x: torch.Tensor, y: Any, name: str = "labels", *, margin: bool = False,
                 where: str = "") -> torch.Tensor:
    """Labels checked against what ``model`` outputs on ``x``: class indices below its number of logits.

    One forward pass on ``x[:1]`` in eval mode, without gradient (buffers untouched), gives the
    output width. A model with c >= 2 logits needs integer labels in [0, c) (returned as int64);
    a one-output model (a margin or regression model) needs ``len(x)`` finite values, in
    {-1, +1} when ``margin`` (a margin loss ``l(y f(x))``); they are returned unchanged.
    """
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or len(y) != len(x):
        return targets(y, name, n=len(x), where=where)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            p = next(model.parameters(), None)
            out = model(x[:1] if p is None else x[:1].to(p.device))
    finally:
        model.train(was_training)
    if out.ndim == 2 and out.shape[1] >= 2:
        return labels(y, name, num_classes=out.shape[1], n=len(x), where=where)
    targets(y, name, n=len(x), where=where)
    if margin and len(y) and not bool(((y == 1) | (y == -1)).all()):
        found = torch.unique(y[(y != 1) & (y != -1)])[:5].tolist()
        raise _fail(where, name, f"must be -1 or +1 for a one-logit margin loss, found {found}; "
                                 f"map {{0, 1}} labels with y = 2 * y - 1")
    return y


def targets(y: Any, name: str = "labels", *, n: int | None = None, where: str = "") -> torch.Tensor:
    """A 1-D tensor of ``n`` finite values: integer labels or real targets (one-logit and regression models)."""
    if not isinstance(y, torch.Tensor) or y.ndim != 1:
        return labels(y, name, n=n, where=where)
    if n is not None and len(y) != n:
        raise _fail(where, name, f"must hold one label per sample ({n}), got {len(y)}")
    if y.is_floating_point():
        return finite(y, name, where=where)
    if y.dtype == torch.bool or y.is_complex():
        return labels(y, name, n=n, where=where)  # raises, naming the dtype
    return y  # integer targets of any sign (e.g. +-1)
