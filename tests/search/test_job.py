import json

import pytest

from amoeba_search.search.job import BudgetError, run_job, write_outputs
from amoeba_search.search.oracle import MetricOracle, design_sample
from tests.search.test_search import SPACE, latency, metric


def _oracle(tmp_path, calls):
    def evaluate_one(shape):
        calls.append(shape)
        return float(metric([shape])[0])

    return MetricOracle(evaluate_one, {"metric": "synthetic"}, tmp_path / "evaluations.json")


def test_job_fits_searches_verifies_and_writes(tmp_path):
    calls = []
    job = run_job(SPACE, _oracle(tmp_path, calls), lambda s: float(latency([s])[0]), budget_ms=35,
                  predictor_path=tmp_path / "predictor.json", trials=80,
                  measure_latency=lambda s: float(latency([s])[0]) * 1.01, layers_for=lambda s: list(range(s.depth)))
    assert job.predictor.holdout_spearman > 0.9 and not job.predictor.reused
    assert job.real_evaluations == len(set(calls)) <= 40 + 12 + len(job.result.front)
    front = job.front_records()
    assert front and all(r["predicted_latency_ms"] <= 35 for r in front)
    assert all(r["verified_latency_ms"] == pytest.approx(r["predicted_latency_ms"] * 1.01) for r in front)
    assert all(r["verified_metric"] is not None and len(r["kept_layers"]) == r["depth"] for r in front)
    paths = write_outputs(job, tmp_path / "out", title="synthetic")
    assert json.loads(paths["front_json"].read_text())["best"] == str(job.best_shape())
    assert paths["plot"].stat().st_size > 10_000
    # A second job reuses the predictor and the cached evaluations: no new real evaluations.
    calls.clear()
    again = run_job(SPACE, _oracle(tmp_path, calls), lambda s: float(latency([s])[0]), budget_ms=35,
                    predictor_path=tmp_path / "predictor.json", trials=80)
    assert again.predictor.reused and calls == []


def test_best_shape_respects_the_budget_on_measured_latency(tmp_path):
    slow = lambda s: float(latency([s])[0]) * 1.15  # the device turns out 15% slower than its table
    job = run_job(SPACE, _oracle(tmp_path, []), lambda s: float(latency([s])[0]), budget_ms=35, trials=80,
                  measure_latency=slow)
    predicted_best = job.result.best().shape
    assert slow(predicted_best) > 35  # the predicted best is too slow in reality ...
    best = job.best_shape()
    assert best != predicted_best and slow(best) <= 35  # ... so the verified numbers choose another
    rows = {r["shape"]: r for r in job.front_records()}
    within = [r for r in rows.values() if r["verified_latency_ms"] <= 35]
    assert rows[str(best)]["verified_metric"] == min(r["verified_metric"] for r in within)


def test_budget_no_shape_meets(tmp_path):
    with pytest.raises(BudgetError, match="no shape meets 3 ms: the fastest, d15-f0.5-h0.333"):
        run_job(SPACE, _oracle(tmp_path, []), lambda s: float(latency([s])[0]), budget_ms=3)


def test_design_sample_covers_every_choice():
    shapes = design_sample(SPACE, 40, seed=0)
    assert len(set(shapes)) == 40 and shapes[:2] == [SPACE.largest(), SPACE.smallest()]
    assert {s.depth for s in shapes} == set(SPACE.depths)
    assert {s.ffn_ratio for s in shapes} == set(SPACE.ffn_ratios)
    held = design_sample(SPACE, 12, seed=1, exclude=shapes, extremes=False)
    assert len(held) == 12 and not set(held) & set(shapes)
