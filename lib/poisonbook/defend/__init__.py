"""Defences, one module per family; every public name is importable from ``poisonbook.defend``.

* :mod:`.indiscriminate` (Part III): Sever, influence removal, MaxUp.
"""

from .indiscriminate import *  # noqa: F401,F403
from .indiscriminate import __all__ as _indiscriminate_all

__all__ = [*_indiscriminate_all]
