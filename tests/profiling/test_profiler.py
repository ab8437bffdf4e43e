import json
import subprocess
import sys

import pytest

from amoeba_search.profiling.design import PlannedShape, design_shapes
from amoeba_search.profiling.devices import BUILTIN
from amoeba_search.profiling.flows.base import MeasureSettings
from amoeba_search.profiling.lut import LatencyTable
from amoeba_search.profiling.model_source import load_model_source
from amoeba_search.profiling.profiler import ProfileRequest, run_profile
from amoeba_search.profiling.table_schema import LatencyTableError
from amoeba_search.shapes import ModelDims, SearchSpace, SubnetShape
from tests.conftest import tiny_config
from tests.profiling.fakes import ConstantPower, FakeFlow, additive_latency, machine


@pytest.fixture
def source(tmp_path):
    tiny_config().save_pretrained(tmp_path / "tiny")
    return load_model_source(str(tmp_path / "tiny" / "config.json"))


def request_for(source, out, **kw):
    settings = kw.pop("settings", MeasureSettings(prompt_len=8, decode_tokens=4, repeats=2, threads=1))
    return ProfileRequest(device=BUILTIN["cpu"], machine=machine(), flow_name="fake", source=source, out=out,
                          settings=settings, holdout=4, **kw)


def test_design_covers_every_width_at_two_depths_and_holds_out_others():
    space = SearchSpace.default(ModelDims(30, 576, 1536, 9, 3, 64))
    plan = design_shapes(space, holdout=12)
    design = [p.shape for p in plan if p.role == "design"]
    holdout = [p.shape for p in plan if p.role == "holdout"]
    assert len(design) == 15 * 2 + 2 and len(holdout) == 12 and len(space) == 240
    assert not set(design) & set(holdout)
    for f in space.ffn_ratios:
        for h in space.heads_ratios:
            assert SubnetShape(15, f, h) in design and SubnetShape(30, f, h) in design
    assert all(p.shape in space for p in plan)
    assert design_shapes(space, holdout=12) == plan  # seeded


def test_profile_writes_rows_and_an_exact_evaluation(source, tmp_path):
    out = tmp_path / "cpu" / "fake.csv"
    flow = FakeFlow(source.dims)
    summary = run_profile(request_for(source, out), flow)
    table = LatencyTable.load(out)
    assert summary.measured == len(table) == flow.measure_calls == summary.planned
    assert summary.full_grid == len(SearchSpace.default(source.dims))
    row = table.rows.iloc[0]
    assert row["device"] == "cpu" and row["flow"] == "fake" and row["model"] == "tiny"
    assert row["model_fingerprint"].startswith("tiny|llama-L6")
    assert json.loads(row["versions"])["fake"] == "1.0"
    assert summary.eval_path.name == "fake.eval.json"
    assert summary.evaluation["metrics"]["decode"]["per-width"]["within_10pct"] == 1.0
    s = SubnetShape(5, 0.625, 0.667)
    assert table.predict(s) == pytest.approx(additive_latency(5, 0.625, 2 / 3)[1], rel=1e-3)


def test_resume_skips_measured_rows(source, tmp_path):
    out = tmp_path / "fake.csv"
    first = FakeFlow(source.dims, fail_after=5)
    with pytest.raises(KeyboardInterrupt):
        run_profile(request_for(source, out), first)
    assert len(LatencyTable.load(out)) == 5  # rows measured before the "kill" survive
    second = FakeFlow(source.dims)
    summary = run_profile(request_for(source, out, resume=True), second)
    assert summary.skipped == 5 and second.measure_calls == summary.planned - 5
    third = FakeFlow(source.dims)
    run_profile(request_for(source, out, resume=True), third)
    assert third.measure_calls == 0
    table = LatencyTable.load(out)
    assert len(table) == summary.planned and not table.rows.duplicated(["shape", "role"]).any()


def test_existing_table_needs_resume_or_overwrite(source, tmp_path):
    out = tmp_path / "fake.csv"
    plan = [PlannedShape(SubnetShape(6, 1.0, 1.0), "extra")]
    run_profile(request_for(source, out, plan=plan), FakeFlow(source.dims))
    with pytest.raises(FileExistsError, match="--resume"):
        run_profile(request_for(source, out, plan=plan), FakeFlow(source.dims))
    flow = FakeFlow(source.dims)
    run_profile(request_for(source, out, plan=plan, overwrite=True), flow)
    assert flow.measure_calls == 1 and len(LatencyTable.load(out)) == 1


def test_resume_refuses_a_table_of_other_settings(source, tmp_path):
    out = tmp_path / "fake.csv"
    plan = [PlannedShape(SubnetShape(6, 1.0, 1.0), "extra")]
    run_profile(request_for(source, out, plan=plan), FakeFlow(source.dims))
    other = MeasureSettings(dtype="bf16", prompt_len=8, decode_tokens=4, repeats=2, threads=1)
    with pytest.raises(LatencyTableError, match="dtype"):
        run_profile(request_for(source, out, plan=plan, resume=True, settings=other), FakeFlow(source.dims))


@pytest.mark.parametrize("windows", [True, False])
def test_energy_per_token_from_power_telemetry(source, tmp_path, windows):
    out = tmp_path / "fake.csv"
    plan = [PlannedShape(SubnetShape(6, 1.0, 1.0), "extra")]
    power = ConstantPower(50.0)
    run_profile(request_for(source, out, plan=plan), FakeFlow(source.dims, windows=windows), power_source=power)
    row = LatencyTable.load(out).rows.iloc[0]
    prefill, decode = additive_latency(6, 1.0, 1.0)
    # 50 W x decode seconds per token = millijoules per token
    assert row["decode_energy_mj_per_token"] == pytest.approx(50.0 * decode, rel=1e-6)
    assert row["prefill_energy_mj"] == pytest.approx(50.0 * prefill, rel=1e-6)
    assert row["power_source"] == "fake-power" and power.closed
    assert json.loads(row["extra"])["energy_scope"] == ("timed-windows" if windows else "mean-power-x-latency")


def test_disturbed_measurements_are_repeated_and_the_quietest_kept(source, tmp_path, monkeypatch):
    from amoeba_search.profiling import profiler

    loads = iter([1.5, 0.9, 1.2])
    monkeypatch.setattr(profiler, "other_load", lambda start, end: next(loads))
    monkeypatch.setattr(profiler, "wait_until_quiet", lambda limit, timeout: 0.0)
    out = tmp_path / "fake.csv"
    flow = FakeFlow(source.dims)
    plan = [PlannedShape(SubnetShape(6, 1.0, 1.0), "extra")]
    run_profile(request_for(source, out, plan=plan, max_other_load=0.5, max_attempts=3, wait_idle_s=1), flow)
    row = LatencyTable.load(out).rows.iloc[0]
    assert flow.measure_calls == 3 and row["other_load"] == 0.9
    assert json.loads(row["extra"])["attempts"] == 3


def test_contention_probe_reads_proc_stat():
    from amoeba_search.profiling.machine import cpu_snapshot, other_load

    start = cpu_snapshot()
    sum(i * i for i in range(200_000))  # our own work is not counted as other load
    load = other_load(start, cpu_snapshot())
    assert load is None or load >= 0.0


def test_contention_probe_counts_our_children_as_ours():
    """A flow's build step in a subprocess (the ORT builder) is our work, not another process's load."""
    from amoeba_search.profiling.machine import cpu_snapshot

    start = cpu_snapshot()
    if start is None:
        pytest.skip("no /proc/stat here")
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nprint(time.process_time())"
    child_cpu = float(subprocess.run([sys.executable, "-c", burn], capture_output=True, text=True,
                                     check=True).stdout)
    assert cpu_snapshot()[2] - start[2] >= 0.9 * child_cpu


def test_passes_measure_each_shape_again_and_resume_counts_rows(source, tmp_path):
    out = tmp_path / "fake.csv"
    plan = [PlannedShape(SubnetShape(d, 1.0, 1.0), "design") for d in (3, 4, 5)]
    with pytest.raises(KeyboardInterrupt):
        run_profile(request_for(source, out, plan=plan, passes=2), FakeFlow(source.dims, fail_after=4))
    flow = FakeFlow(source.dims)
    summary = run_profile(request_for(source, out, plan=plan, passes=2, resume=True), flow)
    assert summary.planned == 6 and summary.skipped == 4 and flow.measure_calls == 2
    counts = LatencyTable.load(out).rows["shape"].value_counts()
    assert set(counts) == {2}


def test_an_interrupted_overwrite_keeps_the_old_table(source, tmp_path):
    out = tmp_path / "fake.csv"
    run_profile(request_for(source, out), FakeFlow(source.dims))
    before = out.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        run_profile(request_for(source, out, overwrite=True), FakeFlow(source.dims, fail_after=3))
    assert out.read_bytes() == before  # the old table is replaced only by a complete new one
    summary = run_profile(request_for(source, out, overwrite=True), FakeFlow(source.dims))
    assert summary.out == out and len(LatencyTable.load(out)) == summary.planned
    assert sorted(p.name for p in tmp_path.iterdir() if ".new" in p.name) == []
