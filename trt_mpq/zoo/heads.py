"""Linear classifier heads fitted with scikit-learn (imported on call) on FP32 features."""

from __future__ import annotations

import numpy as np

from trt_mpq.errors import TaskError


def lr_head_weights(features: np.ndarray, labels: np.ndarray, n_classes: int, *, seed: int,
                    C: float = 1.0, max_iter: int = 2000) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit a scikit-learn LogisticRegression and return (W [n_classes, d], b [n_classes],
    training accuracy) of an equivalent linear layer (argmax of W x + b = LR's prediction)."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    lr.fit(features.astype(np.float64), labels)
    if list(lr.classes_) != list(range(n_classes)):
        raise TaskError(f"the head's training data holds classes {list(lr.classes_)}, expected "
                        f"0..{n_classes - 1}")
    if n_classes == 2:
        w = lr.coef_[0]
        W = np.stack([-w / 2, w / 2])
        b = np.array([-lr.intercept_[0] / 2, lr.intercept_[0] / 2])
    else:
        W, b = lr.coef_, lr.intercept_
    acc = float(lr.score(features.astype(np.float64), labels))
    return W.astype(np.float32), b.astype(np.float32), acc
