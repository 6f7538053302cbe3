"""Closed forms and numerical checks of the book's four papers, one module per paper.

* :mod:`.poisonability`: Lu, Kamath & Yu 2023 (Part III): margin losses, the threshold tau,
  Lambert-W bounds, the Theorem 2 construction.

Every public name is importable from ``poisonbook.theory``.
"""

from .poisonability import *  # noqa: F401,F403
from .poisonability import __all__ as _poisonability_all
from .poisonability import _check_labels, check_eps_d  # noqa: F401  (used by poison)

__all__ = [*_poisonability_all]
