"""Row-chunked z-scoring for the fitted estimators' numpy predictions (a row's prediction never depends on
the other rows, and memory stays bounded for large inputs)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils.validation import validate_data

#: rows standardised (and predicted) at a time
PRED_CHUNK = 2048


def standardised_chunks(est: Any, X: Any) -> Any:
    """Validate ``X`` for a fitted estimator and yield ``(rows, z-scored float64 rows, output array)`` in
    chunks of :data:`PRED_CHUNK` (a row's prediction never depends on the other rows)."""
    X = validate_data(est, X, dtype=[np.float64, np.float32], reset=False)
    out = np.empty(len(X))
    if len(X) == 0:
        yield slice(0, 0), np.empty((0, X.shape[1])), out
    for a in range(0, len(X), PRED_CHUNK):
        sl = slice(a, a + PRED_CHUNK)
        yield sl, (np.asarray(X[sl], dtype=np.float64) - est.x_mean_) / est.x_scale_, out

