"""Drift-cancelled measurement: interleaving with a reference shape, ratio columns, and old tables."""
import csv
import json

import numpy as np
import pytest

from amoeba_search.profiling.design import PlannedShape, design_shapes
from amoeba_search.profiling.devices import BUILTIN
from amoeba_search.profiling.flows.base import MeasureSettings
from amoeba_search.profiling.interleave import bracketed_ratios
from amoeba_search.profiling.lut import LatencyTable
from amoeba_search.profiling.model_source import load_model_source
from amoeba_search.profiling.profiler import ProfileRequest, run_profile
from amoeba_search.profiling.table_schema import ADDED_COLUMNS, COLUMNS, LatencyTableError, append_row, eval_path
from amoeba_search.shapes import SearchSpace, SubnetShape
from tests.conftest import tiny_config
from tests.profiling.fakes import FakeFlow, additive_latency, machine, table_row

DRIFT = 0.30  # the machine slows down by 30% over the run


class DriftingFlow(FakeFlow):
    """:class:`FakeFlow` on a machine whose speed drifts: every timing is multiplied by a factor that grows
    linearly with the number of measure calls, from 1 to ``1 + DRIFT`` over ``calls`` calls."""

    def __init__(self, dims, *, calls: int):
        super().__init__(dims, windows=False)
        self.rate = DRIFT / calls

    def measure(self, handle, settings):
        m = super().measure(handle, settings)
        factor = 1.0 + self.rate * (self.measure_calls - 1)
        m.prefill_ms = [v * factor for v in m.prefill_ms]
        m.decode_ms_per_token = [v * factor for v in m.decode_ms_per_token]
        return m


@pytest.fixture
def source(tmp_path):
    tiny_config().save_pretrained(tmp_path / "tiny")
    return load_model_source(str(tmp_path / "tiny" / "config.json"))


def request_for(source, out, **kw):
    settings = MeasureSettings(prompt_len=8, decode_tokens=4, repeats=2, threads=1)
    return ProfileRequest(device=BUILTIN["cpu"], machine=machine(), flow_name="fake", source=source, out=out,
                          settings=settings, holdout=4, max_rounds=1, **kw)


def truth(shape: SubnetShape, metric: str) -> float:
    pre, dec = additive_latency(shape.depth, shape.ffn_ratio, shape.heads_ratio)
    return dec if metric == "decode" else pre


def test_bracketing_cancels_linear_drift_exactly():
    drift = 1.0 + 0.1 * np.arange(7)  # R S R S R S R, call by call
    reference = 10.0 * drift[0::2]
    shape = 4.0 * drift[1::2]
    assert bracketed_ratios(shape, reference) == pytest.approx([0.4] * 3, rel=1e-12)
    with pytest.raises(ValueError, match="reference rounds"):
        bracketed_ratios(shape, reference[:-1])


def test_ratio_predictor_stays_true_while_the_clock_drifts(source, tmp_path):
    space = SearchSpace.default(source.dims)
    plan = design_shapes(space, holdout=4)
    out = tmp_path / "drift.csv"
    flow = DriftingFlow(source.dims, calls=3 * len(plan))  # R S R per shape
    reference = space.largest()
    run_profile(request_for(source, out, plan=plan, reference=reference, reference_reload=10), flow)
    table = LatencyTable.load(out)
    assert table.has_ratios and table.reference_shape == reference
    assert set(table.rows["reference_shape"]) == {str(reference)}
    unseen = [s for s in space if s not in {p.shape for p in plan}]
    for metric in ("decode", "prefill"):
        now = truth(reference, metric)  # the reference measured now, on a quiet machine
        rel = np.array([table.predict(s, metric=metric, reference_ms=now) / truth(s, metric) - 1 for s in unseen])
        absolute = np.array([table.predict(s, metric=metric) / truth(s, metric) - 1 for s in unseen])
        assert np.abs(rel).max() < 0.02
        assert np.abs(absolute).max() > 0.05  # the drift spoils absolute timings
        ratio = table.predict_relative(unseen[0], metric=metric)
        assert ratio == pytest.approx(truth(unseen[0], metric) / now, rel=0.02)
    e2e = table.predict(unseen[0], metric="e2e",
                        reference_ms={"decode": truth(reference, "decode"), "prefill": truth(reference, "prefill")})
    assert e2e == pytest.approx(truth(unseen[0], "prefill") + 4 * truth(unseen[0], "decode"), rel=0.02)
    # the reference was loaded again every 10 shapes, and the table records how far its loads spread
    report = json.loads(eval_path(out).read_text())
    floor = report["noise_floor"]
    assert report["reference_shape"] == str(reference)
    assert floor["loads"] == -(-len(plan) // 10)
    assert 0.0 < floor["reference_decode_spread_across_loads"] < DRIFT + 0.05
    # held-out error of the ratio predictor beside the absolute one's
    assert report["ratio_metrics"]["decode"]["per-width"]["max_ape"] < 0.02
    assert report["metrics"]["decode"]["per-width"]["max_ape"] > 0.05


def test_without_a_reference_rows_have_no_ratios(source, tmp_path):
    out = tmp_path / "plain.csv"
    flow = FakeFlow(source.dims)
    run_profile(request_for(source, out, plan=[PlannedShape(SubnetShape(6, 1.0, 1.0), "extra")]), flow)
    assert flow.measure_calls == 1
    table = LatencyTable.load(out)
    assert not table.has_ratios and table.reference_shape is None


def old_table(path, rows):
    """Write ``rows`` in the schema before the ratio columns existed."""
    header = [c for c in COLUMNS if c not in ADDED_COLUMNS]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow([row[c] for c in header])
    return path


def synthetic_rows():
    rows = []
    for f in (0.5, 1.0):
        for h in (0.333, 1.0):
            for d in (3, 6):
                pre, dec = additive_latency(d, f, h)
                rows.append(table_row(f"d{d}-f{f:g}-h{h:g}", prefill=pre, decode=dec))
    return rows


def test_old_tables_without_ratio_columns_load_and_predict(tmp_path):
    path = old_table(tmp_path / "old.csv", synthetic_rows())
    table = LatencyTable.load(path)
    assert not table.has_ratios and table.noise_floor() is None
    assert table.predict("d4-f0.5-h1") == pytest.approx(additive_latency(4, 0.5, 1.0)[1], rel=1e-9)
    with pytest.raises(LatencyTableError, match="no ratio columns"):
        table.predict_relative("d4-f0.5-h1")
    with pytest.raises(LatencyTableError, match="no ratio columns"):
        table.predict("d4-f0.5-h1", reference_ms=5.0)
    # appending a row of today's schema first rewrites the old header; every old row keeps its values
    pre, dec = additive_latency(4, 1.0, 1.0)
    append_row(path, table_row("d4-f1-h1", role="holdout", prefill=pre, decode=dec))
    with open(path) as handle:
        assert next(csv.reader(handle)) == list(COLUMNS)
    again = LatencyTable.load(path)
    assert len(again) == 9 and again.predict("d4-f0.5-h1") == pytest.approx(table.predict("d4-f0.5-h1"))


def test_resuming_an_old_table_stays_absolute(source, tmp_path):
    out = tmp_path / "fake.csv"
    plan = [PlannedShape(SubnetShape(6, 1.0, 1.0), "extra"), PlannedShape(SubnetShape(3, 0.5, 0.333), "extra")]
    run_profile(request_for(source, out, plan=plan[:1]), FakeFlow(source.dims))
    flow = FakeFlow(source.dims)
    run_profile(request_for(source, out, plan=plan, resume=True, reference=SubnetShape(6, 1.0, 1.0)), flow)
    assert flow.measure_calls == 1  # no reference rounds: the table stays of one kind
    assert not LatencyTable.load(out).has_ratios


def test_a_table_holds_ratios_to_one_reference(source, tmp_path):
    out = tmp_path / "fake.csv"
    plan = [PlannedShape(SubnetShape(6, 1.0, 1.0), "extra"), PlannedShape(SubnetShape(3, 0.5, 0.333), "extra")]
    run_profile(request_for(source, out, plan=plan[:1], reference=SubnetShape(6, 1.0, 1.0)), FakeFlow(source.dims))
    with pytest.raises(ValueError, match="--reference d6-f1-h1"):
        run_profile(request_for(source, out, plan=plan, resume=True, reference=SubnetShape(5, 1.0, 1.0)),
                    FakeFlow(source.dims))
    rows = [table_row("d3-f1-h1", reference_shape="d6-f1-h1", decode_ratio=0.5, prefill_ratio=0.5),
            table_row("d6-f1-h1", reference_shape="d5-f1-h1", decode_ratio=1.0, prefill_ratio=1.0)]
    for row in rows:
        append_row(tmp_path / "mixed.csv", row)
    with pytest.raises(LatencyTableError, match="mixes reference shapes"):
        LatencyTable.load(tmp_path / "mixed.csv")
