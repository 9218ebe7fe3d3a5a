"""The embedded synthetic demo set: procedural scenes with a SIMULATED memory experiment.

:func:`make_demo_set` draws a small collection of outdoor-like scenes (sky/ground gradients, low-frequency
colour noise, clouds, texture, a wavy horizon, shaded and patterned objects, sometimes one salient
high-contrast object) from hidden generative parameters, gives every image a *true* memorability through a
documented model that uses no autoencoder, and lets virtual observers play the repeat-detection game. The
result is written in the ``memcat`` layout, so the whole memlens pipeline can run on it and later stages can
be checked against a known truth.

**The scores are simulated by virtual observers, not measured on people.** See ``docs/demo-set.md``.

Generative model of the true memorability of image *i* (all terms are written to ``demo_truth.csv``)::

    logit p_i = b0 + b_dist * D_i + b_sal * S_i + b_cat[c_i] + e_i,   e_i ~ N(0, sigma_img^2)

* ``D_i``: distinctiveness in the hidden parameter space: the weighted Euclidean distance from image i's
  standardised parameter vector to the nearest other image of the set, z-scored over the set;
* ``S_i``: contrast (0..1) of the salient high-contrast object, 0 when the image has none;
* ``b_cat``: a modest offset per category.

Observer j (random ability ``a_j``, false-alarm bias ``f_j``) sees a random subset of the images twice. On
the repeat it responds (a hit) with probability ``sigmoid(logit p_i + a_j)``; on the first presentation it
responds (a false alarm) with probability ``sigmoid(f0 - f_typ * D_i + f_j)`` (typical images feel familiar).
Per image: ``H`` hits, ``FA`` false alarms, ``n_resp`` repeat presentations, and, exactly as in MemCat,
``memorability_wo_fa_correction = H / n_resp`` and ``memorability_w_fa_correction = (H - FA) / n_resp``.

Modules: :mod:`.scenes` (categories, hidden parameters, the model's coefficients, distinctiveness),
:mod:`.rendering` (drawing an image from its parameters), :mod:`.observers` (the simulated experiment) and
:mod:`.build` (:func:`make_demo_set`: writing the set).
"""

from __future__ import annotations

from .build import GENERATOR, GENERATOR_VERSION, MARKER_FILE, MEMCAT_COLUMNS, SOURCE, make_demo_set
from .rendering import JPEG_QUALITY
from .scenes import DEMO_CATEGORIES, DEMO_MODEL, PARAM_COLUMNS, parameter_distinctiveness

__all__ = [
    "make_demo_set",
    "DEMO_MODEL",
    "DEMO_CATEGORIES",
    "PARAM_COLUMNS",
    "MEMCAT_COLUMNS",
    "parameter_distinctiveness",
    "GENERATOR",
    "GENERATOR_VERSION",
    "SOURCE",
    "JPEG_QUALITY",
    "MARKER_FILE",
]
