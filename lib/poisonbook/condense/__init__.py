"""Dataset condensation: DC, DSA and DM, and the protocol that evaluates a synthetic set.

Papers (the book's Part I):

* **DC**: Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021,
  Algorithm 1: match the gradients of a network's loss on a real and on a synthetic batch
  of each class, along the network's own training trajectory.
* **DSA**: Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation",
  ICML 2021: DC with the same random, differentiable augmentation ``A_w`` applied to the
  real and the synthetic batch of a class (:mod:`poisonbook.augment`).
* **DM**: Zhao & Bilen, "Dataset Condensation with Distribution Matching" (arXiv 2110.04181,
  WACV 2023): match the mean embeddings of real and synthetic images of each class under
  freshly sampled, untrained networks; the loss is eq. (2) of Zheng & Li, *RDM-DC* (UAI 2023)
  (``papers/000``), and the class loop is their Algorithm 3 with the plain mean as estimator.

Where the papers are silent the defaults follow the authors' public code (the book's
``REFERENCE-FACTS``): ConvNet width 128, depth 3; DM 20,000 iterations, image lr 1.0, momentum
0.5, 256 real images per class; DC 1,000 iterations, image lr 0.1, momentum 0.5, network lr
0.01, 256 real images per class, loops (outer, inner) = (1, 1), (10, 50), (50, 10) for 1, 10,
50 images per class.

Coordinates. The reference code condenses *standardised* images (per-channel mean 0, std 1),
and its learning rates and augmentation magnitudes are in those units. Every function here
therefore standardises the real images with per-channel statistics (computed from the real
training images unless ``stats`` is given), runs the algorithm in standardised coordinates,
and returns the synthetic images mapped back to the caller's coordinates (``[0, 1]`` for
:mod:`poisonbook.data`; they are *not* clipped, as in the reference). :func:`evaluate_synthetic`
trains and tests in the same standardised coordinates.

Randomness. All draws (network initialisations, real batches, augmentation parameters,
noise initialisation) come from one ``torch.Generator`` seeded with ``seed`` and saved in the
checkpoint, so a run killed half way and resumed ends with the same synthetic set as an
uninterrupted run. Tensors stay on the device of the real images ``x``.

Speed. :func:`dm` embeds the real batch without autograd and in channels-last memory (optionally
``torch.compile``-d), where the ConvNet's instance norms run as ``_norm.instance_norm`` (PyTorch's
channels-last ``group_norm`` is slow there and less accurate); on a CPU every large batch goes through the
network in pieces (``chunk``, :data:`CPU_CHUNK`: mostly so that glibc reuses their memory instead of mapping it
afresh, with a page fault per page, at every pass); :func:`dm_multi` condenses several synthetic
sets against one real pass (common random numbers); :func:`dc` can batch its per-class real gradients
(``batch_classes``) and compile the passes that need only first derivatives (``compile``). Results equal
the plain eager path up to float rounding (``tests/test_condense_fast.py``; timings in
``benchmarks/bench_condense.py``).

Modules: ``_core`` (defaults, losses, results, run machinery), ``_norm`` (the channels-last instance
norm), ``_dm`` (DM), ``_dc`` (DC, DSA), ``_guard`` (GUARD), ``_evaluate`` (baseline and evaluation); every
public name is re-exported here.
"""

from ._core import (CPU_CHUNK, DC_DEFAULTS, DC_LOOPS, DM_DEFAULTS, EVAL_DEFAULTS, INITS, Condensed, Estimator,
                    Evaluation, Standardize, callable_key, channel_stats, cross_entropy_loss, dm_loss, estimate_real,
                    feature_mean, match_distance, per_class)
from ._dc import dc, dsa
from ._dm import DMVariant, dm, dm_multi
from ._evaluate import evaluate_synthetic, random_subset
from ._guard import GUARD_FORMS, CurvatureLoss, guard

__all__ = [
    "CPU_CHUNK", "DC_LOOPS", "DM_DEFAULTS", "DC_DEFAULTS", "EVAL_DEFAULTS", "INITS", "Estimator", "Condensed",
    "Evaluation", "Standardize", "channel_stats", "feature_mean", "per_class", "callable_key", "estimate_real",
    "dm_loss", "match_distance", "cross_entropy_loss", "dm", "dm_multi", "DMVariant", "dc", "dsa", "GUARD_FORMS",
    "CurvatureLoss", "guard", "random_subset", "evaluate_synthetic",
]
