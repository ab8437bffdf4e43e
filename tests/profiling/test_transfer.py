"""Transfer of a latency table to another machine from a few anchor shapes measured there."""
import json

import numpy as np
import pytest

from amoeba_search.profiling.lut import LatencyTable
from amoeba_search.profiling.table_schema import KEY_COLUMNS, append_row, eval_path
from amoeba_search.profiling.transfer import (Correction, choose_anchors, fit_correction, source_costs,
                                              source_latencies, transfer_rows)
from amoeba_search.shapes import SubnetShape
from tests.conftest import tiny_config
from tests.profiling.fakes import FakeFlow, additive_latency, table_row

FFN = (0.5, 0.75, 1.0)
HEADS = (0.333, 0.667, 1.0)
MACHINE_B = "Other CPU 1 (4 cores)"


def machine_a(tmp_path):
    """Machine A's table: every width at depths 3 and 6 (additive latency, exact)."""
    path = tmp_path / "a.csv"
    for f in FFN:
        for h in HEADS:
            for d in (3, 6):
                pre, dec = additive_latency(d, f, h)
                append_row(path, table_row(f"d{d}-f{f:g}-h{h:g}", prefill=pre, decode=dec))
    return LatencyTable.load(path)


def b_key():
    return {col: table_row("d3-f1-h1", machine=MACHINE_B)[col] for col in KEY_COLUMNS}


def build_b(tmp_path, source, distortion, anchors, *, noise=0.0, seed=0):
    """Machine B's transferred table: ``anchors`` measured on B (``distortion`` of A, times a little noise),
    written as B's measured rows, then the transferred rows."""
    rng = np.random.default_rng(seed)
    there = {m: source_latencies(source, m) for m in ("decode", "prefill")}
    measured = {s: {m: distortion[m](there[m][s]) * (1 + rng.uniform(-noise, noise)) for m in there}
                for s in anchors}
    rows, record = transfer_rows(source, measured, key=b_key(), provenance={"table": "a.csv"})
    path = tmp_path / "b.csv"
    for s, ms in measured.items():
        append_row(path, table_row(str(s), role="extra", machine=MACHINE_B, prefill=ms["prefill"], decode=ms["decode"]))
    for row in rows:
        append_row(path, row)
    return LatencyTable.load(path), record


class SlowFakeFlow(FakeFlow):
    """The tiny model's fake flow on a machine twice as slow."""

    name = "slowfake"

    def __init__(self):
        from amoeba_search.shapes import ModelDims

        super().__init__(ModelDims.from_config(tiny_config()), windows=False)

    def measure(self, handle, settings):
        m = super().measure(handle, settings)
        m.prefill_ms = [2 * v for v in m.prefill_ms]
        m.decode_ms_per_token = [2 * v for v in m.decode_ms_per_token]
        return m


HELD_OUT = [SubnetShape(d, f, h) for d in (4, 5) for f in (0.5, 0.625, 0.875, 1.0) for h in HEADS]


def b_truth(shape, metric, distortion):
    pre, dec = additive_latency(shape.depth, shape.ffn_ratio, shape.heads_ratio)
    return distortion[metric](dec if metric == "decode" else pre)


def test_three_anchors_recover_an_affine_machine_within_two_percent(tmp_path):
    source = machine_a(tmp_path)
    distortion = {"decode": lambda t: 0.8 + 1.7 * t, "prefill": lambda t: 5.0 + 1.3 * t}
    anchors = choose_anchors(source_latencies(source), 3)
    table, record = build_b(tmp_path, source, distortion, anchors, noise=0.005)
    assert record["corrections"]["decode"]["kind"] == "affine" and len(record["anchors"]) == 3
    assert (table.rows["role"] == "transferred").sum() == 18 - 3 and table.machine == MACHINE_B
    for metric in ("decode", "prefill"):
        errors = [table.predict(s, metric=metric) / b_truth(s, metric, distortion) - 1 for s in HELD_OUT]
        assert np.abs(errors).max() < 0.02
    # a plain scale from A would be far off: the distortion is not a scale
    plain = [source.predict(s) / b_truth(s, "decode", distortion) - 1 for s in HELD_OUT]
    assert np.abs(plain).max() > 0.2
    extra = json.loads(table.rows.loc[table.rows["role"] == "transferred", "extra"].iloc[0])
    assert extra["transfer"]["transferred_from"] == {"table": "a.csv"}
    assert set(extra["transfer"]["anchors"]) == {str(s) for s in anchors}


def test_one_anchor_and_a_pure_scale_is_exact(tmp_path):
    source = machine_a(tmp_path)
    distortion = {"decode": lambda t: 1.37 * t, "prefill": lambda t: 0.61 * t}
    anchors = choose_anchors(source_latencies(source), 1)
    assert anchors == [SubnetShape(6, 1.0, 1.0)]  # the slowest: the full shape
    table, record = build_b(tmp_path, source, distortion, anchors)
    assert record["corrections"]["decode"] == {"kind": "scale", "coef": [pytest.approx(1.37, rel=1e-12)]}
    for metric in ("decode", "prefill"):
        for s in HELD_OUT:
            assert table.predict(s, metric=metric) == pytest.approx(b_truth(s, metric, distortion), rel=1e-9)


def test_anchors_spread_over_the_range():
    latency = {f"s{i}": float(i) for i in range(10)}
    assert choose_anchors(latency, 3) in (["s0", "s4", "s9"], ["s0", "s5", "s9"])
    assert choose_anchors(latency, 2) == ["s0", "s9"]
    assert choose_anchors({"a": 1.0, "b": 2.0}, 5) == ["a", "b"]
    with pytest.raises(ValueError, match="between 1 and 5"):
        choose_anchors(latency, 6)


def test_corrections():
    x = np.array([2.0, 5.0, 9.0])
    assert fit_correction(x, 3 + 2 * x).coef == pytest.approx((3.0, 2.0))
    power = fit_correction(x, 1.5 * x ** 0.8, kind="loglinear")
    assert power.apply([4.0])[0] == pytest.approx(1.5 * 4 ** 0.8)
    # an affine fit that would make a fast shape negative falls back to a power law
    fallback = fit_correction(x, np.array([0.1, 4.0, 9.0]), domain=[0.5, 9.0])
    assert fallback.kind == "loglinear" and (fallback.apply([0.5, 9.0]) > 0).all()
    assert Correction("scale", (2.0,)).to_dict() == {"kind": "scale", "coef": [2.0]}
    with pytest.raises(ValueError, match="at least 2 anchors"):
        fit_correction([2.0], [3.0], kind="affine")
    with pytest.raises(ValueError, match="choose from"):
        fit_correction(x, x, kind="cubic")


def test_an_anchor_outside_the_source_table_is_predicted_by_its_model(tmp_path):
    """Depth 4 is not among machine A's rows (depths 3 and 6); A's linear model prices it."""
    source = machine_a(tmp_path)
    shape = SubnetShape(4, 1.0, 1.0)
    pre, dec = additive_latency(4, 1.0, 1.0)
    rows, record = transfer_rows(source, {shape: {"decode": 2 * dec, "prefill": 2 * pre}}, key=b_key())
    assert record["corrections"]["decode"]["coef"] == [pytest.approx(2.0)] and len(rows) == 18
    assert rows[0]["decode_ms_median"] == pytest.approx(2 * additive_latency(3, 0.5, 0.333)[1])


def split_distortion(weights):
    """Machine B prices A's fixed, attention and FFN parts differently (no affine map of A's latency)."""
    return {m: (lambda split: float(np.dot(split, weights[m]))) for m in ("decode", "prefill")}


def test_grouped_correction_prices_the_parts_separately(tmp_path):
    source = machine_a(tmp_path)
    weights = {"decode": (1.0, 2.5, 0.4), "prefill": (1.2, 0.9, 0.4)}  # e.g. matrix units that speed up the FFN
    costs = {m: source_costs(source, m) for m in ("decode", "prefill")}
    full = SubnetShape(6, 1.0, 1.0)
    assert costs["decode"][full].sum() == pytest.approx(source.predict(full, method="linear"), rel=1e-12)
    anchors = choose_anchors(costs["decode"], 5)
    assert anchors[0] == SubnetShape(6, 1.0, 1.0)  # the slowest first
    assert np.linalg.matrix_rank(np.array([costs["decode"][s] for s in anchors[:3]])) == 3  # the parts apart
    measured = {s: {m: float(np.dot(costs[m][s], weights[m])) for m in costs} for s in anchors}
    rows, record = transfer_rows(source, measured, key=b_key())
    for m in ("decode", "prefill"):
        assert record["corrections"][m]["kind"] == "grouped"  # auto: it predicts each left-out anchor exactly
        assert record["corrections"][m]["coef"] == pytest.approx(list(weights[m]), rel=1e-9)
    for row in rows:
        truth = float(np.dot(costs["decode"][SubnetShape.parse(row["shape"])], weights["decode"]))
        assert row["decode_ms_median"] == pytest.approx(truth, rel=1e-9)
    # the best affine map of A's latency misses B by more than 10% somewhere
    affine = fit_correction([costs["decode"][s] for s in anchors], [measured[s]["decode"] for s in anchors],
                            kind="affine")
    split = np.array(list(costs["decode"].values()))
    truth = split @ np.array(weights["decode"])
    assert np.abs(affine.apply(split) / truth - 1).max() > 0.1
    # three anchors: auto stays affine (a grouped fit would pass through every anchor, untested)
    assert fit_correction([costs["decode"][s] for s in anchors[:3]],
                          [measured[s]["decode"] for s in anchors[:3]]).kind == "affine"


def test_cli_offers_every_correction_kind():
    """amoeba-profile keeps its imports lazy, so --correction lists the kinds itself: it must list them all."""
    from amoeba_search.cli.profile import build_parser
    from amoeba_search.profiling.transfer import KINDS

    action = next(a for a in build_parser()._actions if a.dest == "correction")
    assert tuple(action.choices) == KINDS


def test_grouped_correction_needs_cost_splits_and_three_distinct_anchors(tmp_path):
    source = machine_a(tmp_path)
    one_depth = LatencyTable(source.rows[source.rows["depth"] == 6])
    with pytest.raises(ValueError, match="cannot split latency into parts: the linear model needs at least two depths"):
        source_costs(one_depth)
    with pytest.raises(ValueError, match="cost split"):
        fit_correction([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], kind="grouped")
    with pytest.raises(ValueError, match="cost splits"):
        Correction("grouped", (1.0, 1.0, 1.0)).apply([2.0])
    same_width = [source.cost_split(SubnetShape(d, 1.0, 1.0)) for d in (3, 4, 6)]  # attention : FFN fixed
    with pytest.raises(ValueError, match="at least 3 anchors that differ in depth and width"):
        fit_correction(same_width, [1.0, 2.0, 3.0], kind="grouped")
    assert Correction("grouped", (1.0, 2.0, 3.0)).apply([[1.0, 1.0, 1.0]]) == pytest.approx([6.0])


def test_cli_transfers_a_table_to_another_flow(env, monkeypatch, capsys):
    """amoeba-profile --transfer: a table of flow "fake", another flow twice as slow, one anchor."""
    from amoeba_search.cli.profile import main
    from amoeba_search.profiling import flows
    tmp_path = env
    monkeypatch.setitem(flows.FLOWS, "slowfake", "tests.profiling.test_transfer:SlowFakeFlow")
    common = ["--device", "cpu", "--model", str(tmp_path / "tiny" / "config.json"), "--threads", "1", "--json"]
    source_path = tmp_path / "a.csv"
    assert main([*common, "--flow", "fake", "--out", str(source_path), "--prompt-len", "8", "--context-len", "12",
                 "--holdout", "2", "--no-interleave"]) == 0
    capsys.readouterr()
    out = tmp_path / "b.csv"
    assert main([*common, "--flow", "slowfake", "--transfer", str(source_path), "--anchors", "1",
                 "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    table = LatencyTable.load(out)
    assert table.flow == "slowfake" and int(table.prompt_len) == 8 and int(table.context_len) == 12
    assert (table.rows["role"] == "extra").sum() == 1 and (table.rows["role"] == "transferred").any()
    anchor = table.rows.loc[table.rows["role"] == "extra"].iloc[0]
    assert anchor["reference_shape"] == "d6-f1-h1" and anchor["decode_ratio"] == pytest.approx(1.0)
    # the source's linear model, priced at the shape's heads ratio as named (0.667, not 2/3): within 1e-3
    assert table.predict("d4-f0.75-h0.667") == pytest.approx(2 * additive_latency(4, 0.75, 2 / 3)[1], rel=1e-3)
    report = json.loads(eval_path(out).read_text())
    assert report["transfer"]["corrections"]["decode"]["coef"] == [pytest.approx(2.0, rel=1e-3)]  # as above
    assert summary["evaluation"]["transfer"]["anchors"].keys() == {"d6-f1-h1"}
    again = [a for a in common if a != "--json"] + ["--flow", "slowfake", "--transfer", str(source_path),
                                                    "--anchors", "2", "--out", str(out)]
    assert main([*again, "--resume"]) == 2 and "already holds transferred rows" in capsys.readouterr().err
    assert main([*again, "--overwrite"]) == 0
    shapes = LatencyTable.load(source_path).rows["shape"].nunique()
    line = f"transferred {shapes - 2} shapes from {source_path} with 2 anchor(s): decode affine"
    assert line in capsys.readouterr().out
