"""Poisoning attacks, one module per family; every public name is importable from ``poisonbook.poison``.

* :mod:`.indiscriminate` (Part III): RandomPC, GradPC, Gradient Canceling, gradient matching, TGDA.
* :mod:`.unlearnable` (Part V): EM, REM, TAP, LSP, AR, OPS.
"""

from .indiscriminate import *  # noqa: F401,F403
from .indiscriminate import __all__ as _indiscriminate_all
from .indiscriminate import _conjugate_gradient  # noqa: F401  (tested directly)

from .unlearnable import *  # noqa: F401,F403
from .unlearnable import __all__ as _unlearnable_all

__all__ = [*_indiscriminate_all, *_unlearnable_all]
