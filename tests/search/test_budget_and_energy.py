"""The budget-looser-than-every-shape fact, the estimate label in the JSON, and energy as the budgeted cost."""
import json

import pytest

from amoeba_search.profiling.lut import LatencyTable
from amoeba_search.profiling.table_schema import append_row
from amoeba_search.search.costs import energy_predictor
from amoeba_search.search.job import budget_slack, run_job
from amoeba_search.shapes import SubnetShape
from tests.profiling.fakes import table_row
from tests.search.test_job import _oracle
from tests.search.test_search import SPACE, latency

ESTIMATE = "estimate: roofline (orin-nx spec sheet, fp16) + torch overheads (not a measurement)"


def test_budget_slack_is_a_fact_with_one_line():
    costs = {SubnetShape.parse("d30-f1-h1"): 5.3, SubnetShape.parse("d15-f0.5-h0.333"): 1.0}
    fact = budget_slack(costs, 40, source_kind="estimate")
    assert fact["slowest_shape"] == "d30-f1-h1" and fact["slowest"] == 5.3 and fact["source"] == "estimate"
    assert fact["message"] == ("budget 40 ms is above every shape's latency (slowest: 5.3 ms, estimate): every "
                               "shape fits, so the choice is the most accurate one; pass a tighter --budget-ms")
    assert budget_slack(costs, 5.0) is None
    assert "--budget-mj" in budget_slack(costs, 9, unit="mJ")["message"]


def test_loose_budget_is_recorded_and_the_estimate_labelled(tmp_path):
    job = run_job(SPACE, _oracle(tmp_path, []), lambda s: float(latency([s])[0]), budget_ms=1000, trials=40,
                  verify="none", settings={"latency_source": ESTIMATE}, source_kind="estimate")
    summary = job.to_dict()
    assert summary["budget_warning"]["source"] == "estimate" and "every shape fits" in summary["budget_warning"]["message"]
    assert all(row["latency_source"].startswith("estimate") for row in summary["front"])
    assert summary["reference"]["latency_source"] == ESTIMATE and summary["budget_unit"] == "ms"
    tight = run_job(SPACE, _oracle(tmp_path, []), lambda s: float(latency([s])[0]), budget_ms=35, trials=40,
                    verify="none")
    assert tight.to_dict()["budget_warning"] is None


def _energy_table(path, *, energy=True):
    """Latency grows with depth; energy per token grows with FFN width far more: the two disagree."""
    for depth in (10, 30):
        for f in (0.5, 1.0):
            for h in (0.333, 1.0):
                mj = 2 + 0.05 * depth + 20 * f if energy else ""
                append_row(path, table_row(f"d{depth}-f{f:g}-h{h:g}", decode=1 + depth * (0.5 + 0.1 * f),
                                           decode_energy_mj_per_token=mj))
    return LatencyTable.load(path)


def test_energy_budget_picks_by_energy(tmp_path):
    predict = energy_predictor(_energy_table(tmp_path / "t.csv"))
    assert predict("d20-f0.75-h1") == pytest.approx(2 + 1 + 15)
    job = run_job(SPACE, _oracle(tmp_path, []), predict, budget_ms=14, trials=60, verify="none", cost_unit="mJ")
    best = job.best_shape()
    assert predict(best) <= 14 and best.ffn_ratio <= 0.5  # only narrow FFNs fit 14 mJ, at any depth
    summary = job.to_dict()
    assert summary["budget_mj"] == 14 and summary["budget_unit"] == "mJ" and "budget_ms" not in summary
    assert all("predicted_energy_mj" in row and "predicted_latency_ms" not in row for row in summary["front"])


def test_energy_without_energy_columns_is_one_clear_error(tmp_path):
    table = _energy_table(tmp_path / "t.csv", energy=False)
    with pytest.raises(ValueError, match="has no energy measurements .*use --metric decode"):
        energy_predictor(table)


@pytest.mark.parametrize("argv, message", [
    (["--metric", "energy", "--budget-ms", "5"], "pass --budget-mj"),
    (["--metric", "decode", "--budget-mj", "5"], "pass --budget-ms"),
    (["--metric", "energy", "--budget-mj", "5", "--roofline"], "an estimate \\(--roofline\\) has none"),
])
def test_budget_flag_must_match_the_metric(argv, message):
    from amoeba_search.cli.search import _budget, build_parser

    args = build_parser().parse_args(argv)
    with pytest.raises(ValueError, match=message):
        _budget(args)
    assert _budget(build_parser().parse_args(["--metric", "energy", "--budget-mj", "5"])) == (5.0, "mJ")


def test_energy_explanation_names_energy_and_prints(tmp_path):
    from amoeba_search.cli.search import _explain, build_parser

    predict = energy_predictor(_energy_table(tmp_path / "t.csv"))
    job = run_job(SPACE, _oracle(tmp_path, []), predict, budget_ms=14, trials=60, verify="none", cost_unit="mJ")
    why = job.to_dict()["explanation"]
    assert why["budget_mj"] == 14 and why["energy_mj"] <= 14
    assert not [k for k in json.dumps(why).split('"') if k.endswith("_ms")], why
    lines = _explain(why, {}, build_parser().parse_args(["--metric", "energy", "--budget-mj", "14"]))
    assert lines[0].startswith(f"best: {why['shape']}") and "mJ" in lines[0] and "inside the budget" in lines[0]
