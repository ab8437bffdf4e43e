import random

import numpy as np
import pytest
from scipy.stats import spearmanr

from amoeba_search.search.predictors import (ConstantPredictor, GPPredictor, RidgePredictor, cross_validate,
                                             fit_best, load_predictor, save_predictor)
from tests.search.test_search import SPACE, metric


def _sample(n, seed):
    shapes = random.Random(seed).sample(list(SPACE), n)
    return shapes, list(metric(shapes) * np.exp(np.random.default_rng(seed).normal(0, 0.01, n)))


@pytest.mark.parametrize("cls", [RidgePredictor, GPPredictor])
def test_predictor_beats_constant_on_held_out_shapes(cls):
    shapes, values = _sample(30, seed=0)
    held_out = [s for s in SPACE if s not in set(shapes)]
    truth = metric(held_out)
    fitted = cls(SPACE).fit(shapes, values)
    constant = ConstantPredictor(SPACE).fit(shapes, values)
    err = np.mean(np.abs(fitted.predict(held_out) / truth - 1))
    base = np.mean(np.abs(constant.predict(held_out) / truth - 1))
    assert err < 0.1 < base
    assert spearmanr(fitted.predict(held_out), truth).statistic > 0.95


def test_fit_best_reports_cross_validation_and_round_trips(tmp_path):
    shapes, values = _sample(24, seed=1)
    best, report = fit_best(SPACE, shapes, values)
    kinds = [r["kind"] for r in report]
    assert kinds == ["constant", "ridge", "gp"]
    chosen = next(r for r in report if r["kind"] == best.kind)
    assert chosen["spearman"] == max(r["spearman"] for r in report if r["kind"] != "constant")
    path = tmp_path / "predictor.json"
    save_predictor(best, path, report=report)
    again, data = load_predictor(path)
    np.testing.assert_allclose(again.predict(list(SPACE)), best.predict(list(SPACE)), rtol=1e-6)
    assert data["report"] == report


def test_bad_training_data():
    with pytest.raises(ValueError, match="at least 2"):
        RidgePredictor(SPACE).fit([SPACE.largest()], [10.0])
    with pytest.raises(ValueError, match="positive and finite"):
        RidgePredictor(SPACE).fit([SPACE.largest(), SPACE.smallest()], [10.0, float("nan")])


def test_cross_validation_ranks_real_predictors_above_the_constant():
    shapes, values = _sample(20, seed=2)
    constant = cross_validate("constant", SPACE, shapes, values)
    for kind in ("ridge", "gp"):
        report = cross_validate(kind, SPACE, shapes, values)
        assert report["spearman"] > max(0.9, constant["spearman"]) and report["mare"] < constant["mare"]
