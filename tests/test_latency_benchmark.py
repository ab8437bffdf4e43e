"""benchmarks/latency_predictor.py --smoke (the drift-cancelled study) end to end with fake flows: exact latencies,
so ratios, ratio x reference and a flow-to-flow transfer must all be exact; results land only in --out-dir."""
from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest

from amoeba_search.profiling import flows
from tests.profiling import fakes

ROOT = Path(__file__).resolve().parents[1]


def bench():
    return importlib.import_module("benchmarks.latency_predictor")


def smoke_dims():
    import tempfile

    from amoeba_search.profiling.model_source import load_model_source

    with tempfile.TemporaryDirectory() as tmp:
        return load_model_source(bench().smoke_model(Path(tmp) / "m")).dims


class SmokeFake(fakes.FakeFlow):
    name = "fake"

    def __init__(self):
        super().__init__(smoke_dims(), windows=False)


class SlowSmokeFake(SmokeFake):
    """The same latencies, twice as slow: a transfer from ``fake`` with one anchor is exact."""

    name = "slowfake"

    def measure(self, handle, settings):
        m = super().measure(handle, settings)
        m.prefill_ms = [2 * v for v in m.prefill_ms]
        m.decode_ms_per_token = [2 * v for v in m.decode_ms_per_token]
        return m


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("AMOEBA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(flows.FLOWS, "fake", "tests.test_latency_benchmark:SmokeFake")
    monkeypatch.setitem(flows.FLOWS, "slowfake", "tests.test_latency_benchmark:SlowSmokeFake")
    profiles = tmp_path / "profiles"
    (profiles / "smollm2-135m" / "cpu").mkdir(parents=True)  # "another machine's" table of the fake flow
    shutil.copy(ROOT / "profiles" / "smollm2-135m" / "cpu" / "torch.csv", profiles / "smollm2-135m" / "cpu" / "fake.csv")
    return tmp_path


def test_smoke_run_scores_ratios_transfers_and_resumes(env, capsys):
    out = env / "out"
    (out).mkdir()
    (out / "latency.json").write_text(json.dumps({"flows": {"torch": {"kept": True}}}))
    argv = ["--smoke", "--flows", "fake,slowfake", "--out-dir", str(out), "--profiles", str(env / "profiles")]
    assert bench().main(argv) == 0
    results = json.loads((out / "latency.json").read_text())
    assert results["flows"] == {"torch": {"kept": True}}  # the file's other content stays
    (slug, section), = results["drift_cancelled"]["machines"].items()  # this machine's section
    fake = section["flows"]["fake-p16-c20-t1"]
    assert fake["machine"]["table"] == fake["machine"]["holdout_table"] and fake["machine"]["slug"] == slug
    assert fake["machine"]["transfer_source"] == "AMD EPYC (2 cores)"
    assert len(fake["holdout_shapes"]) == 2 and fake["reference_shape"] == "d30-f1-h1"
    assert fake["ratio_accuracy_on_holdout"]["decode"]["within_10pct"] == 1.0
    for metric in ("decode", "prefill", "e2e"):
        assert fake["absolute_accuracy_on_holdout_ratio_x_reference_now"][metric]["max_ape_pct"] < 0.5
    assert fake["cost"]["design_rows"] == 32 and fake["cost"]["full_grid"] == 240
    assert set(fake["transfer_from_committed"]) >= {"k1", "k3", "k5"}
    assert fake["targets_met"]["ratio_decode"] and fake["targets_met"]["absolute_e2e"]
    pair = section["cross_flow_transfer"]["fake-p16-c20-t1->slowfake-p16-c20-t1"]
    assert pair["k1"]["decode"]["max_ape_pct"] < 0.5 and pair["target_met_decode_k_le_5"]
    table = out / "latency-{}-fake-p16-c20-t1-interleaved.csv".format(fake["machine"]["slug"])
    rows = len(table.read_text().splitlines())
    assert pair["k1"]["decode_ratio"]["max_ape_pct"] < 0.5 and pair["target_met_decode_ratio_k_le_5"]
    assert pair["target_own_table_ratio"]["within_10pct"] == 1.0
    # --study transfer scores the same transfers again from the tables, measuring nothing
    assert bench().main(["--study", "transfer", "--results", str(out / "latency.json")]) == 0
    again = json.loads((out / "latency.json").read_text())["drift_cancelled"]["machines"][slug]
    assert again["flows"]["fake-p16-c20-t1"]["transfer_from_committed"] == fake["transfer_from_committed"]
    assert again["cross_flow_transfer"] == section["cross_flow_transfer"] and again["transfer_rescored"]
    assert len(table.read_text().splitlines()) == rows
    # the same flow measured on another machine (here: one twice as slow) transfers to this one's, and back
    doc = json.loads((out / "latency.json").read_text())
    doc["drift_cancelled"]["machines"]["other-2c"] = {"flows": {"fake-p16-c20-t1": section["flows"]["slowfake-p16-c20-t1"]}}
    (out / "latency.json").write_text(json.dumps(doc))
    assert bench().main(["--study", "transfer", "--results", str(out / "latency.json")]) == 0
    machines = json.loads((out / "latency.json").read_text())["drift_cancelled"]["machines"]
    here = machines[slug]["flows"]["fake-p16-c20-t1"]
    assert set(here["transfer_from_other_machines"]) == {"other-2c"}
    assert here["transfer_from_other_machines"]["other-2c"]["k1"]["decode_ratio"]["max_ape_pct"] < 0.5
    assert here["targets_met"]["transfer_other_machine_decode_ratio_k_le_5"]
    assert set(machines["other-2c"]["flows"]["fake-p16-c20-t1"]["transfer_from_other_machines"]) == {slug}
    assert "other-2c -> " + slug in capsys.readouterr().out
    # a source machine whose table is gone is skipped with the reason; the other transfers are still scored
    doc = json.loads((out / "latency.json").read_text())
    gone = dict(doc["drift_cancelled"]["machines"]["other-2c"]["flows"]["fake-p16-c20-t1"], table=str(env / "gone.csv"))
    doc["drift_cancelled"]["machines"]["gone-2c"] = {"flows": {"fake-p16-c20-t1": gone}}
    (out / "latency.json").write_text(json.dumps(doc))
    assert bench().main(["--study", "transfer", "--results", str(out / "latency.json")]) == 0
    here = json.loads((out / "latency.json").read_text())["drift_cancelled"]["machines"][slug]["flows"]["fake-p16-c20-t1"]
    assert "gone.csv" in here["transfer_from_other_machines"]["gone-2c"]["skipped"]
    assert here["transfer_from_other_machines"]["other-2c"]["k1"]["decode_ratio"]["max_ape_pct"] < 0.5
    assert here["targets_met"]["transfer_other_machine_decode_ratio_k_le_5"]
    assert "gone-2c -> " + slug + ": skipped" in capsys.readouterr().out
    doc["drift_cancelled"]["machines"].pop("gone-2c")
    (out / "latency.json").write_text(json.dumps(doc))
    # a second run resumes the tables: nothing is measured again
    assert bench().main(argv) == 0
    assert len(table.read_text().splitlines()) == rows
    assert "fake-p16-c20-t1 on" in capsys.readouterr().out
    assert fake["ratio_accuracy_by_passes"] is None and fake["reference_now"]["loads"] == 1
    # --passes 2 resumes with a second row per shape, and scores the first pass alone beside both
    assert bench().main([*argv, "--passes", "2"]) == 0
    assert len(table.read_text().splitlines()) == 2 * rows - 1
    twice = json.loads((out / "latency.json").read_text())["drift_cancelled"]["machines"][slug]["flows"]["fake-p16-c20-t1"]
    assert twice["reference_now"]["loads"] == 2 and len(twice["reference_now"]["decode_per_load"]) == 2
    by_passes = twice["ratio_accuracy_by_passes"]
    assert set(by_passes) == {"passes_1", "passes_2"}
    assert all(v["ratio"]["decode"]["within_10pct"] == 1.0 for v in by_passes.values())
    assert by_passes["passes_2"]["holdout_decode_ratio_spread_across_passes"] is not None
    assert by_passes["passes_1"]["holdout_decode_ratio_spread_across_passes"] is None
    from amoeba_search.profiling.lut import LatencyTable

    assert len(bench().first_passes(LatencyTable.load(table), 1)) == rows - 1


def test_smoke_never_writes_into_the_results_folder(capsys):
    assert bench().main(["--smoke", "--out-dir", str(ROOT / "benchmarks" / "results" / "x")]) == 2
    assert not (ROOT / "benchmarks" / "results" / "x").exists()
