import json

import pandas as pd
import pytest

from amoeba_search.profiling.lut import LatencyTable
from amoeba_search.profiling.table_schema import (COLUMNS, LatencyTableError, append_row, drop_partial_last_line,
                                                  eval_path)
from amoeba_search.shapes import SubnetShape
from tests.profiling.fakes import additive_latency, table_row

DEPTHS = (3, 4, 5, 6)
FFN = (0.5, 0.75, 1.0)
HEADS = (0.333, 0.667, 1.0)


def synthetic_rows(depths=(3, 6), holdout=()):
    rows = []
    for f in FFN:
        for h in HEADS:
            for d in depths:
                pre, dec = additive_latency(d, f, h)
                rows.append(table_row(f"d{d}-f{f:g}-h{h:g}", prefill=pre, decode=dec))
    for shape in holdout:
        s = SubnetShape.parse(shape)
        pre, dec = additive_latency(s.depth, s.ffn_ratio, s.heads_ratio)
        rows.append(table_row(shape, role="holdout", prefill=pre, decode=dec))
    return rows


def write(path, rows):
    for row in rows:
        append_row(path, row)
    return path


def test_round_trip_and_key(tmp_path):
    path = write(tmp_path / "t.csv", synthetic_rows())
    table = LatencyTable.load(path)
    assert len(table) == 18
    assert table.device == "cpu" and table.flow == "torch" and table.dtype == "fp32"
    assert list(pd.read_csv(path).columns) == list(COLUMNS)


@pytest.mark.parametrize("method", ["per-width", "shared-intercept"])
def test_predictor_reproduces_additive_latency_exactly(tmp_path, method):
    table = LatencyTable.load(write(tmp_path / "t.csv", synthetic_rows()))
    for d in DEPTHS:
        for f in FFN:
            for h in HEADS:
                pre, dec = additive_latency(d, f, h)
                shape = SubnetShape(d, f, h)
                assert table.predict(shape, metric="decode", method=method) == pytest.approx(dec, rel=1e-9)
                assert table.predict(shape, metric="prefill", method=method) == pytest.approx(pre, rel=1e-9)
                assert table.predict(str(shape), metric="e2e", method=method) == pytest.approx(pre + 8 * dec, rel=1e-9)


def test_linear_method_is_exact_for_bilinear_per_layer_cost(tmp_path):
    table = LatencyTable.load(write(tmp_path / "t.csv", synthetic_rows()))
    pre, dec = additive_latency(4, 0.75, 0.667)
    assert table.predict(SubnetShape(4, 0.75, 0.667), method="linear") == pytest.approx(dec, rel=1e-9)


def test_unmeasured_width_is_interpolated_and_outside_is_refused(tmp_path):
    table = LatencyTable.load(write(tmp_path / "t.csv", synthetic_rows()))
    # additive_latency is bilinear in (f, h), so bilinear interpolation between measured widths is exact
    pre, dec = additive_latency(5, 0.625, 0.5)
    assert table.predict(SubnetShape(5, 0.625, 0.5), method="per-width") == pytest.approx(dec, rel=1e-9)
    with pytest.raises(LatencyTableError, match="outside the measured"):
        table.predict(SubnetShape(5, 0.25, 1.0), method="per-width")


def test_evaluation_on_holdout_rows_is_written_beside_the_table(tmp_path):
    rows = synthetic_rows(holdout=["d4-f0.75-h0.667", "d5-f1-h0.333", "d4-f0.5-h1"])
    table = LatencyTable.load(write(tmp_path / "torch.csv", rows))
    report = table.evaluate()
    assert report["holdout_rows"] == 3 and report["fit_rows"] == 18
    for metric in ("decode", "prefill", "e2e"):
        best = report["metrics"][metric][report["chosen"][metric]]
        assert best["mape"] < 1e-9 and best["within_10pct"] == 1.0
    out = table.write_eval(extra={"full_grid": 36})
    assert out == eval_path(tmp_path / "torch.csv") == tmp_path / "torch.eval.json"
    saved = json.loads(out.read_text())
    assert saved["full_grid"] == 36 and saved["key"]["device"] == "cpu"


@pytest.mark.parametrize("column,value,message", [
    ("device", "a5000", "mixes device"),
    ("dtype", "bf16", "mixes dtype"),
    ("model_fingerprint", "other|llama-L30", "mixes model_fingerprint"),
    ("flow", "llamacpp", "mixes flow"),
])
def test_mixed_tables_are_rejected(tmp_path, column, value, message):
    rows = synthetic_rows()
    rows[5][column] = value
    with pytest.raises(LatencyTableError, match=message):
        LatencyTable.load(write(tmp_path / "t.csv", rows))


@pytest.mark.parametrize("edit,message", [
    (lambda r: r.update(decode_ms_median="fast"), "not a number"),
    (lambda r: r.update(decode_ms_median=-1.0), "must be positive"),
    (lambda r: r.update(role="training"), "unknown role"),
    (lambda r: r.update(shape="twenty layers"), "cannot read shape"),
    (lambda r: r.update(depth=5), "disagrees"),
    (lambda r: r.update(device=""), "column device is empty"),
    (lambda r: r.update(schema_version=99), "schema version"),
])
def test_malformed_rows_are_rejected_with_one_line(tmp_path, edit, message):
    rows = synthetic_rows()
    edit(rows[2])
    with pytest.raises(LatencyTableError, match=message) as info:
        LatencyTable.load(write(tmp_path / "t.csv", rows))
    assert "\n" not in str(info.value)


def test_missing_columns_empty_and_absent_files_are_rejected(tmp_path):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(LatencyTableError, match="lacks column"):
        LatencyTable.load(tmp_path / "other.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(LatencyTableError, match="not a readable CSV"):
        LatencyTable.load(tmp_path / "empty.csv")
    with pytest.raises(LatencyTableError, match="no latency table"):
        LatencyTable.load(tmp_path / "absent.csv")


def test_model_check_compares_architecture(tmp_path):
    table = LatencyTable.load(write(tmp_path / "t.csv", synthetic_rows()))
    table.check_model("renamed|llama-L6")
    with pytest.raises(LatencyTableError, match="measured for"):
        table.check_model("tiny|llama-L30")
    with pytest.raises(LatencyTableError):
        table.check_model("renamed|llama-L6", strict_name=True)


def test_partial_last_line_is_dropped(tmp_path):
    path = write(tmp_path / "t.csv", synthetic_rows()[:3])
    with open(path, "a") as handle:
        handle.write("1,cpu,Test CPU")  # killed mid-row
    assert drop_partial_last_line(path)
    assert len(LatencyTable.load(path)) == 3
    assert not drop_partial_last_line(path)


def test_append_row_refuses_unknown_columns(tmp_path):
    with pytest.raises(LatencyTableError, match="schema lacks"):
        append_row(tmp_path / "t.csv", {"shape": "d3-f1-h1", "speed": 3})


def test_min_statistic_can_be_fit_instead_of_the_median(tmp_path):
    rows = synthetic_rows()
    for row in rows:  # the fastest repeat is 10% faster than the median everywhere
        row["decode_ms_min"] = row["decode_ms_median"] * 0.9
    path = write(tmp_path / "t.csv", rows)
    fast = LatencyTable.load(path, stat="min")
    pre, dec = additive_latency(4, 0.75, 0.667)
    assert fast.predict("d4-f0.75-h0.667", method="per-width") == pytest.approx(0.9 * dec, rel=1e-9)
    with pytest.raises(LatencyTableError, match="stat must be"):
        LatencyTable.load(path, stat="mean")
