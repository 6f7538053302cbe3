"""Closed forms and numerical checks of the book's four papers, one module per paper.

* :mod:`.robust_mean`: Zheng & Li 2023 (RDM-DC, Part II): appendix A's Chebyshev, alignment and
  deviation bounds.
* :mod:`.poisonability`: Lu, Kamath & Yu 2023 (Part III): margin losses, the threshold tau,
  Lambert-W bounds, the Theorem 2 construction.
* :mod:`.curvature`: GUARD (Part IV): input-space Hessian-vector products, lambda_1, the
  quadratic model of eq. (1), bounds (2) and (3).
* :mod:`.dvae`: D-VAE (Part V): the Bayes hyperplane and its shift, the mixture-KL bounds, entropy.

Every public name is importable from ``poisonbook.theory``.
"""

from .poisonability import *  # noqa: F401,F403
from .poisonability import __all__ as _poisonability_all
from .poisonability import _check_labels, check_eps_d  # noqa: F401  (used by poison)

from .curvature import *  # noqa: F401,F403
from .curvature import __all__ as _curvature_all

from .dvae import *  # noqa: F401,F403
from .dvae import __all__ as _dvae_all

from .robust_mean import *  # noqa: F401,F403
from .robust_mean import __all__ as _robust_mean_all

__all__ = [*_poisonability_all, *_curvature_all, *_dvae_all, *_robust_mean_all]
