"""Formatting of run-record numbers for the page: fixed digits, a dash for "not measured"."""

from __future__ import annotations

import math
import numbers

__all__ = ["DASH", "missing", "num", "pm", "frame"]

DASH = "–"


def missing(v) -> bool:
    """``None``, a non-finite float, or the string a record stores for one (``"nan"``)."""
    if v is None or isinstance(v, str) and v.lower() in ("nan", "none", ""):
        return True
    return isinstance(v, numbers.Real) and not math.isfinite(float(v))


def num(v, digits: int = 2, *, sign: bool = False, sci: bool = False) -> str:
    """``v`` with ``digits`` decimals (significant digits when ``sci``), a sign when ``sign``; a dash if missing."""
    if missing(v):
        return DASH
    if sci:
        return f"{float(v):.{digits}g}" if 1e-3 <= abs(float(v)) < 1e4 or v == 0 else f"{float(v):.{digits - 1}e}"
    return f"{float(v):{'+' if sign else ''}.{digits}f}"


def pm(mean, std, digits: int = 2, *, sign: bool = False) -> str:
    """``mean ± std``; a dash if the mean is missing."""
    return DASH if missing(mean) else f"{num(mean, digits, sign=sign)} ± {num(std, digits)}"


def frame(df, digits: int = 2, **kw):
    """A copy of a DataFrame with every number formatted by :func:`num` and every missing value a dash."""
    return df.apply(lambda col: col.map(lambda v: v if isinstance(v, str) and not missing(v) else
                                        (num(v, digits, **kw) if not isinstance(v, (bool, int)) or missing(v)
                                         else str(v))))
