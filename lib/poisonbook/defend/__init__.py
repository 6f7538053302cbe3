"""Defences, one module per family; every public name is importable from ``poisonbook.defend``.

* :mod:`.indiscriminate` (Part III): Sever, influence removal, MaxUp.
* :mod:`.purification` (Part V): image shortcut squeezing (JPEG, grayscale, bit-depth reduction).
* :mod:`.training` (Parts IV, V): PGD adversarial training.
* :mod:`.vae` (Part V): rate-constrained VAE and D-VAE purification (Yu et al. 2024).
"""

from .indiscriminate import *  # noqa: F401,F403
from .indiscriminate import __all__ as _indiscriminate_all

from .purification import *  # noqa: F401,F403
from .purification import __all__ as _purification_all

from .training import *  # noqa: F401,F403
from .training import __all__ as _training_all

from .vae import *  # noqa: F401,F403
from .vae import __all__ as _vae_all

__all__ = [*_indiscriminate_all, *_purification_all, *_training_all, *_vae_all]
