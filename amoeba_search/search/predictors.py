"""Accuracy predictors: a shape in, a predicted metric (e.g. held-out perplexity) out.

Each predictor has one method that matters, ``predict(shapes) -> np.ndarray``, and a JSON form (no pickle).
They learn log(metric) from a few shapes evaluated for real on the supernet; which model class to trust is
decided by measured cross-validated rank correlation, not by taste (``fit_best``).
"""
from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.stats import spearmanr

from amoeba_search.errors import InputError
from amoeba_search.paths import atomic_write_text
from amoeba_search.shapes import SearchSpace, SubnetShape

SCHEMA_VERSION = 1

logger = logging.getLogger(__name__)


def _features(space: SearchSpace, shapes: Sequence[SubnetShape]) -> np.ndarray:
    return np.array([space.encode(s) for s in shapes], dtype=float)


class Predictor:
    """Base: fit on (shape, metric) pairs, predict the metric; stored as JSON."""

    kind = "base"

    def __init__(self, space: SearchSpace):
        self.space = space
        self.shapes: list[SubnetShape] = []
        self.metrics: list[float] = []

    def fit(self, shapes: Sequence[SubnetShape], metrics: Sequence[float]) -> "Predictor":
        if len(shapes) != len(metrics) or len(shapes) < 2:
            raise InputError(f"need at least 2 evaluated shapes with one metric each, got {len(shapes)}/{len(metrics)}")
        if any(not math.isfinite(m) or m <= 0 for m in metrics):
            raise InputError("metrics must be positive and finite (e.g. perplexities)")
        self.shapes, self.metrics = list(shapes), [float(m) for m in metrics]
        self._fit(_features(self.space, self.shapes), np.log(self.metrics))
        return self

    def predict(self, shapes: Sequence[SubnetShape]) -> np.ndarray:
        return np.exp(self._predict(_features(self.space, shapes)))

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "kind": self.kind, "space": self.space.to_dict(),
                "train": [{"shape": str(s), "metric": m} for s, m in zip(self.shapes, self.metrics)],
                "params": self._params()}

    # subclass hooks
    def _fit(self, x: np.ndarray, y: np.ndarray) -> None: raise NotImplementedError
    def _predict(self, x: np.ndarray) -> np.ndarray: raise NotImplementedError
    def _params(self) -> dict: return {}
    def _load(self, params: dict) -> None: self.fit(self.shapes, self.metrics)


class ConstantPredictor(Predictor):
    """The baseline every real predictor must beat: the mean log-metric."""

    kind = "constant"

    def _fit(self, x, y):
        self.mean = float(y.mean())

    def _predict(self, x):
        return np.full(len(x), self.mean)


class RidgePredictor(Predictor):
    """Ridge regression on quadratic features (depth, widths, their products)."""

    kind = "ridge"

    def __init__(self, space: SearchSpace, alpha: float = 1e-3):
        super().__init__(space)
        self.alpha = alpha

    @staticmethod
    def _expand(x):
        cols = [np.ones(len(x))] + [x[:, i] for i in range(x.shape[1])]
        cols += [x[:, i] * x[:, j] for i in range(x.shape[1]) for j in range(i, x.shape[1])]
        return np.stack(cols, axis=1)

    def _fit(self, x, y):
        a = self._expand(x)
        reg = self.alpha * np.eye(a.shape[1])
        reg[0, 0] = 0.0  # never shrink the intercept
        self.coef = np.linalg.solve(a.T @ a + reg, a.T @ y)

    def _predict(self, x):
        return self._expand(x) @ self.coef

    def _params(self):
        return {"alpha": self.alpha, "coef": self.coef.tolist()}

    def _load(self, params):
        self.alpha, self.coef = params["alpha"], np.array(params["coef"])


class GPPredictor(Predictor):
    """Gaussian process (anisotropic RBF + noise) from scikit-learn; few points, smooth target."""

    kind = "gp"

    def _make(self, theta=None):
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        kernel = ConstantKernel(1.0, (1e-3, 1e5)) * RBF([0.5, 0.5, 0.5], (1e-2, 1e2)) + WhiteKernel(1e-3, (1e-8, 1e-1))
        if theta is not None:
            kernel = kernel.clone_with_theta(np.asarray(theta))
        return GaussianProcessRegressor(kernel=kernel, normalize_y=True, random_state=0,
                                        optimizer="fmin_l_bfgs_b" if theta is None else None,
                                        n_restarts_optimizer=2 if theta is None else 0)

    def _fit(self, x, y, theta=None):
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():  # a bound reached on a few points is expected, not news
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.gp = self._make(theta).fit(x, y)

    def _predict(self, x):
        return self.gp.predict(x)

    def _params(self):
        return {"theta": self.gp.kernel_.theta.tolist(), "kernel": str(self.gp.kernel_)}

    def _load(self, params):
        self._fit(_features(self.space, self.shapes), np.log(self.metrics), theta=params["theta"])


PREDICTORS = {cls.kind: cls for cls in (ConstantPredictor, RidgePredictor, GPPredictor)}


def cross_validate(kind: str, space: SearchSpace, shapes, metrics, *, folds: int = 5, seed: int = 0) -> dict:
    """K-fold Spearman correlation and mean absolute relative error of ``kind`` on held-out shapes."""
    n = len(shapes)
    order = np.random.default_rng(seed).permutation(n)
    predicted = np.empty(n)
    for fold in np.array_split(order, min(folds, n)):
        train = np.setdiff1d(order, fold)
        model = PREDICTORS[kind](space).fit([shapes[i] for i in train], [metrics[i] for i in train])
        predicted[fold] = model.predict([shapes[i] for i in fold])
    truth = np.asarray(metrics, dtype=float)
    rho = spearmanr(predicted, truth).statistic if np.ptp(predicted) > 0 else 0.0
    report = {"kind": kind, "spearman": float(rho), "mare": float(np.mean(np.abs(predicted / truth - 1)))}
    logger.debug("cross-validated %s predictor on %d shapes: Spearman %.3f, mean relative error %.1f%%", kind, n,
                 report["spearman"], 100 * report["mare"])
    return report


def fit_best(space: SearchSpace, shapes, metrics, *, kinds=("ridge", "gp"), seed: int = 0) -> tuple[Predictor, list[dict]]:
    """Fit every kind, keep the one with the best cross-validated rank correlation; return it and the report."""
    report = [cross_validate(k, space, shapes, metrics, seed=seed) for k in ("constant", *kinds)]
    best = max((r for r in report if r["kind"] != "constant"), key=lambda r: (r["spearman"], -r["mare"]))
    logger.info("predictor fitted: %s on %d shapes, cross-validated Spearman %.3f, mean relative error %.1f%% "
                "(constant baseline: %.1f%%)", best["kind"], len(shapes), best["spearman"], 100 * best["mare"],
                100 * report[0]["mare"])
    return PREDICTORS[best["kind"]](space).fit(shapes, metrics), report


def save_predictor(predictor: Predictor, path: str | Path, **extra) -> None:
    atomic_write_text(path, json.dumps({**predictor.to_dict(), **extra}, indent=1))


def load_predictor(path: str | Path) -> tuple[Predictor, dict]:
    """Return the predictor stored at ``path`` and the rest of the file (report, provenance)."""
    from amoeba_search.jsonfile import read_json

    fix = "delete it (amoeba-search fits a new one) or pass another --predictor"
    data = read_json(path, what="predictor file", fix=fix)
    if data.get("schema_version") != SCHEMA_VERSION or data.get("kind") not in PREDICTORS:
        raise InputError(f"{path} is not an amoeba-search predictor file (schema {SCHEMA_VERSION}); {fix}")
    try:
        predictor = PREDICTORS[data["kind"]](SearchSpace.from_dict(data["space"]))
        predictor.shapes = [SubnetShape.parse(row["shape"]) for row in data["train"]]
        predictor.metrics = [float(row["metric"]) for row in data["train"]]
        predictor._load(data["params"])
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        what = f"no {err.args[0]!r} entry" if isinstance(err, KeyError) and err.args else str(err)
        raise InputError(f"predictor file {path} is malformed ({what}); {fix}") from err
    return predictor, data
