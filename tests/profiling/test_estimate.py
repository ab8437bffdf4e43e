"""Flow-aware estimates: the overhead fit, the labels, the dtype from the flow, the Orin NX specs."""
import json

import pandas as pd
import pytest

from amoeba_search.plots import pareto_plot_info
from amoeba_search.profiling.devices import BUILTIN, DeviceSpec, get_device
from amoeba_search.profiling.estimate import (GPU_LAUNCH_DEFAULTS, FlowEstimator, fit_flow_overheads, flow_dtype,
                                              row_roofline_ms, write_flow_overheads)
from amoeba_search.profiling.roofline import roofline_estimate
from amoeba_search.profiling.table_schema import append_row
from amoeba_search.shapes import SubnetShape
from tests.conftest import tiny_config
from tests.profiling.fakes import table_row

SPEC = DeviceSpec(name="box", kind="cpu", description="test CPU", memory_bandwidth_gbs=20.0,
                  peak_tflops={"fp32": 0.05}, provenance="declared")
SCALE, PER_LAYER, PER_CALL = 1.4, 0.25, 2.0


def _rows():
    """A table whose latencies are exactly SCALE x roofline + PER_LAYER x depth + PER_CALL."""
    rows = []
    for depth in (3, 5, 8, 12):
        for ffn, params in ((0.5, 3_000_000), (1.0, 6_000_000)):
            row = table_row(f"d{depth}-f{ffn:g}-h1", params=depth * params + 1_000_000)
            roof = {m: row_roofline_ms(row, SPEC, m) for m in ("decode", "prefill")}
            row.update({f"{m}_ms_{stat}": SCALE * roof[m] + PER_LAYER * depth + PER_CALL
                        for m in ("decode", "prefill") for stat in ("median", "min")})
            rows.append(row)
    return rows


def test_overhead_fit_recovers_known_terms():
    fit = fit_flow_overheads(pd.DataFrame(_rows()), SPEC)
    for metric in ("decode", "prefill"):
        assert fit[metric]["scale"] == pytest.approx(SCALE, rel=1e-6)
        assert fit[metric]["per_layer_ms"] == pytest.approx(PER_LAYER, rel=1e-6)
        assert fit[metric]["per_call_ms"] == pytest.approx(PER_CALL, rel=1e-6)
        assert fit[metric]["residual_max_pct"] < 1e-6 and fit[metric]["rows"] == 8


def test_overheads_file_records_its_sources_and_residuals(tmp_path):
    table = tmp_path / "torch.csv"
    for row in _rows():
        append_row(table, row)
    doc = write_flow_overheads(tmp_path / "flow-overheads.json", [table], SPEC, root=tmp_path)
    assert json.loads((tmp_path / "flow-overheads.json").read_text()) == doc
    fitted = doc["flows"]["torch"]["cpu"]
    assert fitted["source_table"] == "torch.csv" and fitted["dtype"] == "fp32"
    assert fitted["device_spec"]["memory_bandwidth_gbs"] == 20.0 and "residual_rms_pct" in fitted["decode"]
    # a CPU estimate from that file adds the fitted terms to the roofline, in the table's dtype
    est = FlowEstimator(SPEC, tiny_config(), flow="torch", overheads=doc)
    shape = SubnetShape.parse("d3-f0.5-h1")
    base = roofline_estimate(SPEC, tiny_config(), shape, dtype="fp32")["decode_ms"]
    assert est.predict(shape) == pytest.approx(SCALE * base + PER_LAYER * 3 + PER_CALL, rel=1e-6)
    assert est.label.startswith("estimate:") and "fitted on torch.csv" in est.label


def test_committed_overheads_cover_the_cpu_flows():
    from amoeba_search.profiling import CHECKOUT_PROFILES

    doc = json.loads((CHECKOUT_PROFILES / "flow-overheads.json").read_text())
    for flow in ("torch", "ort", "openvino", "llamacpp"):
        fitted = doc["flows"][flow]["cpu"]
        assert fitted["source_table"].endswith(f"cpu/{flow}.csv") and fitted["decode"]["rows"] > 10
        assert fitted["decode"]["residual_rms_pct"] < 25


def test_gpu_estimate_is_launch_bound_fp16_and_labelled():
    est = FlowEstimator(BUILTIN["a5000"], tiny_config(), flow="torch", overheads={})
    assert est.settings["dtype"] == "fp16" and flow_dtype(BUILTIN["cpu"], "torch", {}) == "fp32"
    detail = est.predict_detail("d4-f1-h1")
    d = GPU_LAUNCH_DEFAULTS["torch"]
    launches = d["launch_us"] * (4 * d["kernels_per_layer"] + d["kernels_per_call"]) / 1e3
    assert detail["latency_ms"] == pytest.approx(detail["roofline_decode_ms"] + launches)
    assert detail["source"] == "estimate" and not detail["overheads_fitted"]
    assert "default" in est.label and "no measured table of a GPU" in est.label
    # a flow without a GPU default is a labelled lower bound
    assert "roofline only" in FlowEstimator(BUILTIN["a5000"], tiny_config(), flow="ort", overheads={}).label


def test_plot_info_marks_an_estimate():
    from amoeba_search.search.search import Point

    points = [Point(SubnetShape.parse("d4-f1-h1"), 10.0, 3.0), Point(SubnetShape.parse("d3-f0.5-h1"), 14.0, 2.0)]
    info = pareto_plot_info(points, points, 5.0, latency_name="decode latency (ms/token)",
                            latency_source="estimate: roofline (a5000 spec sheet, fp16) + torch overheads")
    assert info["latency_estimated"] and "estimated" in info["x_label"]
    assert "estimated latency" in info["legend"]["front"]
    measured = pareto_plot_info(points, points, 5.0, latency_source="lookup table torch.csv (measured)")
    assert not measured["latency_estimated"] and "estimated" not in measured["x_label"]


def test_orin_nx_specs_load_with_power_modes():
    big, small = get_device("orin-nx-16gb"), get_device("orin-nx-8gb")
    assert big.memory_bandwidth_gbs == small.memory_bandwidth_gbs == 102.4
    assert [m["name"] for m in big.power_modes] == ["10W", "15W", "25W", "MAXN"]
    assert [m["name"] for m in small.power_modes] == ["10W", "15W", "20W", "MAXN"]
    assert big.power_mode("15w")["watts"] == 15 and small.power_mode("MAXN")["gpu_max_mhz"] == 765
    with pytest.raises(ValueError, match="no power mode '25W'; its modes: 10W, 15W, 20W, MAXN"):
        small.power_mode("25W")
    assert all(any("Data Sheet" in s["document"] for s in spec.sources) for spec in (big, small))
    alias = get_device("orin-nx")
    assert alias.name == "orin-nx" and alias.power_modes == big.power_modes and "alias" in alias.description
    assert DeviceSpec.from_dict(big.to_dict()) == big  # power modes survive a spec file round trip
