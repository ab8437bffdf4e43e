"""benchmarks/search_workers.py: its smoke mode (a tiny random model) measures both phases on a journal file and
on a PostgreSQL server of our own, with no duplicate and no lost evaluation; its guards refuse what they should."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.postgres_server import unavailable_reason

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "search_workers.py"

RUN_KEYS = {"phase", "repeat", "workers", "wall_s", "worker_wall_s", "sample_size", "evaluations_per_worker",
            "duplicates", "lost", "racing_enqueues_pruned", "workers_agree", "values", "torch_threads_per_worker",
            "loadavg_1m_before", "loadavg_1m_after"}
SUMMARY_KEYS = {"one_worker_wall_s", "shared_wall_s", "workers", "ratio_shared_to_one", "target_ratio_at_most",
                "ratio_met", "evaluations_per_worker", "duplicates", "lost", "all_met",
                "shared_values_max_rel_diff_vs_one_worker"}


def module():
    return importlib.import_module("benchmarks.search_workers")


def test_smoke_needs_an_out_path_outside_the_results():
    sw = module()
    with pytest.raises(SystemExit):
        sw.parse_args(["--smoke"])
    with pytest.raises(SystemExit):
        sw.parse_args(["--smoke", "--out", str(sw.RESULTS / "x.json")])
    with pytest.raises(SystemExit):
        sw.parse_args(["--workers", "1"])
    assert sw.parse_args([]).out == sw.RESULTS / "search-workers.json"
    assert sw.parse_args(["--storage", "postgres"]).out == sw.RESULTS / "search-workers-postgres.json"
    assert sw.parse_args([]).sample == 16 and sw.parse_args(["--smoke", "--out", "/tmp/x.json"]).sample == 4


def test_summary_takes_medians_and_judges_the_target():
    sw = module()
    run = lambda phase, wall, **kw: {"phase": phase, "wall_s": wall, "workers": 1 if phase == "one" else 2,  # noqa: E731
                                     "values": {"a": 1.0}, "duplicates": 0, "lost": 0,
                                     "evaluations_per_worker": [4] if phase == "one" else [2, 2], **kw}
    assert sw.summarize([run("one", 10.0)]) is None
    summary = sw.summarize([run("one", 10.0), run("shared", 5.5), run("one", 12.0), run("shared", 6.5)])
    assert summary["ratio_shared_to_one"] == pytest.approx(6.0 / 11.0, abs=1e-4) and summary["all_met"]
    assert not sw.summarize([run("one", 10.0), run("shared", 5.0, duplicates=1)])["all_met"]
    assert not sw.summarize([run("one", 10.0), run("shared", 7.0)])["ratio_met"]


def _check(result: dict, storage: str) -> None:
    assert result["smoke"] is True and result["complete"] is True
    assert result["storage"]["kind"] == storage
    assert {"summary", "cpu_model", "cpu_cores"} <= set(result["machine"])
    assert result["settings"]["threads"] == 1 and "timed" in result and "fairness" in result
    runs = {r["phase"]: r for r in result["runs"]}
    assert set(runs) == {"one", "shared"}
    for phase, run in runs.items():
        assert RUN_KEYS <= set(run), RUN_KEYS - set(run)
        assert run["duplicates"] == 0 and run["lost"] == 0 and run["completed_twice_in_storage"] == 0
        assert run["sample_size"] == 4 and sum(run["evaluations_per_worker"]) == 4
        assert run["torch_threads_per_worker"] == [1] * run["workers"] and run["workers_agree"]
    assert runs["one"]["workers"] == 1 and runs["shared"]["workers"] == 2
    summary = result["summary"]
    assert SUMMARY_KEYS <= set(summary), SUMMARY_KEYS - set(summary)
    assert summary["duplicates"] == 0 and summary["lost"] == 0
    assert summary["shared_values_max_rel_diff_vs_one_worker"] == 0.0  # same model, same thread count


@pytest.mark.slow  # spawns three worker processes that import torch and transformers (~20-40 s)
@pytest.mark.parametrize("storage", ["journal", "postgres"])
def test_smoke_run_shares_the_sample_without_duplicates(tmp_path, storage):
    if storage == "postgres" and unavailable_reason() is not None:
        pytest.skip(unavailable_reason())
    out = tmp_path / "search-workers.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--storage", storage, "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    _check(json.loads(out.read_text()), storage)
    # a rerun with the same settings keeps what was measured
    again = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--storage", storage, "--out", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already measured" in again.stdout
