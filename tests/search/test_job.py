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
                  predictor_path=tmp_path / "predictor.json", trials=80, verify="all",
                  measure_latency=lambda s: float(latency([s])[0]) * 1.01, layers_for=lambda s: list(range(s.depth)))
    assert job.predictor.holdout_spearman > 0.9 and not job.predictor.reused
    near = job.settings["verified_near_front"]
    assert job.real_evaluations == len(set(calls)) <= 40 + 12 + 1 + len(job.result.front) + near
    assert len(job.verified) >= len(job.result.front)  # the front is rebuilt from what was measured
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
    within = [r for r in rows.values() if r["verified_latency_ms"] is not None and r["verified_latency_ms"] <= 35]
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


def test_decisive_verification_checks_the_choice_and_its_nearest_alternatives(tmp_path):
    calls = []
    job = run_job(SPACE, _oracle(tmp_path, calls), lambda s: float(latency([s])[0]), budget_ms=35, trials=80,
                  measure_latency=lambda s: float(latency([s])[0]), verify_count=3)
    rows = job.front_records()
    checked = [r for r in rows if r["verified_metric"] is not None]
    assert len(checked) == 3 < len(rows)  # not the whole front
    # the three most accurate predicted shapes, which sit nearest the budget
    assert {r["shape"] for r in checked} == {r["shape"] for r in sorted(rows, key=lambda r: r["predicted_metric"])[:3]}
    assert str(job.best_shape()) in {r["shape"] for r in checked}
    everything = run_job(SPACE, _oracle(tmp_path, []), lambda s: float(latency([s])[0]), budget_ms=35, trials=80,
                         verify="all")
    assert all(r["verified_metric"] is not None for r in everything.front_records())
    assert job.settings["verify"] == "decisive" and everything.settings["verify"] == "all"
    with pytest.raises(ValueError, match="verify must be one of decisive, all, none"):
        run_job(SPACE, _oracle(tmp_path, []), lambda s: float(latency([s])[0]), budget_ms=35, verify="some")


def test_the_quality_floor_marks_shapes_unusable_and_they_are_never_chosen(tmp_path):
    oracle = _oracle(tmp_path, [])
    free = run_job(SPACE, oracle, lambda s: float(latency([s])[0]), budget_ms=35, trials=80, verify="all")
    full = float(metric([SPACE.largest()])[0])
    best = float(metric([free.best_shape()])[0])
    floor = (best / full) * 0.99  # just below the unconstrained choice: it must be given up
    job = run_job(SPACE, oracle, lambda s: float(latency([s])[0]), budget_ms=35, trials=80, verify="all",
                  max_metric=f"{floor}x")
    assert job.max_metric == pytest.approx(floor * full) and job.reference["metric"] == pytest.approx(full)
    rows = {r["shape"]: r for r in job.front_records()}
    assert not rows[str(free.best_shape())]["usable"]
    assert all(r["usable"] == (r["verified_metric"] <= job.max_metric) for r in rows.values())
    if any(r["usable"] for r in rows.values()):
        assert rows[str(job.best_shape())]["usable"]
    else:
        assert job.best_shape() is None and job.explanation() is None


def test_the_choice_is_explained_against_the_full_model_and_the_budget(tmp_path):
    job = run_job(SPACE, _oracle(tmp_path, []), lambda s: float(latency([s])[0]), budget_ms=35, trials=80,
                  measure_latency=lambda s: float(latency([s])[0]))
    why = job.explanation()
    best = job.best_shape()
    assert why["shape"] == str(best) and why["full_model"] == str(SPACE.largest())
    assert why["speedup_vs_full"] == pytest.approx(float(latency([SPACE.largest()])[0] / latency([best])[0]))
    assert why["metric_change_vs_full_pct"] == pytest.approx(100 * (why["metric"] / job.reference["metric"] - 1))
    assert why["budget_margin_ms"] == pytest.approx(35 - why["latency_ms"]) and why["budget_margin_ms"] >= 0
    assert why["alternatives"] and all(a["metric"] >= why["metric"] for a in why["alternatives"])
    assert job.to_dict()["explanation"] == why


def test_the_plot_marks_the_choice_the_full_model_and_links_verified_points(tmp_path):
    from amoeba_search.plots import pareto_plot_info

    job = run_job(SPACE, _oracle(tmp_path, []), lambda s: float(latency([s])[0]), budget_ms=35, trials=80,
                  measure_latency=lambda s: float(latency([s])[0]) * 1.05, max_metric="3x")
    info = pareto_plot_info(job.result.points, job.result.front, 35, verified=job.verified, chosen=str(job.best_shape()),
                            reference=job.reference, max_metric=job.max_metric)
    assert info["chosen"]["label"] == str(job.best_shape()) and info["chosen"]["verified"]
    assert info["reference"]["label"] == f"full model {SPACE.largest()}"
    assert len(info["links"]) == len(job.verified) and info["links"][0][1][0] == pytest.approx(
        info["links"][0][0][0] * 1.05)
    assert set(info["front"]["labels"]) == {str(p.shape) for p in job.result.front}
    low, high = info["y_range"]
    assert low <= min(info["front"]["y"]) and high >= job.max_metric
    assert info["hidden_above"] == sum(p.metric > high for p in job.result.points)
    paths = write_outputs(job, tmp_path / "out")
    assert paths["plot"].stat().st_size > 10_000


class _Predictor:
    def __init__(self, values):
        self.values = values

    def predict(self, shapes):
        import numpy as np

        return np.array([self.values[s] for s in shapes])


def test_near_front_takes_the_shapes_within_the_band_of_a_front_shape_at_most_as_slow():
    from amoeba_search.search.job import near_front
    from amoeba_search.search.search import Point, SearchResult

    shapes = list(SPACE)[:4]
    lat = dict(zip(shapes, [10.0, 20.0, 30.0, 40.0]))
    predicted = dict(zip(shapes, [100.0, 50.0, 54.0, 80.0]))
    result = SearchResult([Point(s, predicted[s], lat[s]) for s in shapes[:2]], budget_ms=35, method="t", trials=2)
    assert [p.shape for p in result.front] == shapes[:2]
    space = type("Space", (), {"__iter__": lambda self: iter(shapes)})()
    near = near_front(space, _Predictor(predicted), lat, result, 0.1)
    # 54 is within 10% of the 50 at 20 ms; 80 is not, and 40 ms is over the budget anyway
    assert [p.shape for p in near] == [shapes[2]]
    assert near_front(space, _Predictor(predicted), lat, result, 0.05) == []


def test_verify_all_rebuilds_the_front_from_measured_metrics(tmp_path):
    """A shape the predictor underrates is measured because it is near the front, and joins it."""
    calls = []
    job = run_job(SPACE, _oracle(tmp_path, calls), lambda s: float(latency([s])[0]), budget_ms=35,
                  predictor_path=tmp_path / "predictor.json", trials=80, verify="all", verify_band=0.25)
    assert job.settings["verify_band"] == 0.25 and job.settings["verified_near_front"] > 0
    real = {v["shape"]: v["metric"] for v in job.verified}
    rows = job.front_records()
    assert all(r["verified_metric"] == real[r["shape"]] for r in rows)
    # no measured shape within the budget dominates a front shape on the measured metric
    lat = {str(s): float(latency([s])[0]) for s in SPACE}
    for row in rows:
        assert not any(lat[s] <= lat[row["shape"]] and m < row["verified_metric"] and s != row["shape"]
                       for s, m in real.items() if lat[s] <= 35)
    assert job.to_dict()["settings"]["front_from"].startswith("measured metrics")
