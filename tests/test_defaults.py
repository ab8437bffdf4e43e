"""The default model runs with its committed strategy and fine-tuned adapter; any other model with neither."""
from pathlib import Path

import pytest

from amoeba_search import defaults
from amoeba_search.defaults import committed_adapter, committed_strategy, resolve_artefacts

ROOT = Path(__file__).resolve().parents[1]


def test_the_default_model_gets_its_committed_strategy_and_adapter():
    used = resolve_artefacts("smollm2-135m")
    assert used.strategy == ROOT / "profiles" / "smollm2-135m" / "strategy-beam4.json" and used.strategy.is_file()
    assert used.adapter == ROOT / "profiles" / "smollm2-135m" / "adapter"
    assert (used.adapter / "adapter.safetensors").is_file()
    assert "profiles/smollm2-135m/strategy-beam4.json (default for smollm2-135m)" in used.describe()
    # the same strategy named by path is still the default one, so the adapter comes with it
    assert resolve_artefacts("smollm2-135m", strategy=str(used.strategy)).adapter == used.adapter


def test_any_other_model_gets_nothing_by_default(tmp_path):
    used = resolve_artefacts(str(tmp_path / "my-model"))
    assert used.strategy is None and used.adapter is None
    assert used.describe() == "no strategy (none given), no adapter (none given)"


def test_what_the_user_says_wins(tmp_path):
    mine = tmp_path / "strategy.json"
    used = resolve_artefacts("smollm2-135m", strategy=mine)
    assert used.strategy == mine and used.adapter is None  # the default adapter fits only the default strategy
    assert "fits only the default strategy" in used.adapter_source
    assert resolve_artefacts("smollm2-135m", no_adapter=True).adapter is None
    assert resolve_artefacts("smollm2-135m", adapter=tmp_path / "ft").adapter == tmp_path / "ft"
    hand = resolve_artefacts("smollm2-135m", layers=True)
    assert hand.strategy is None and hand.adapter is None
    with pytest.raises(ValueError, match="--adapter and --no-adapter contradict"):
        resolve_artefacts("smollm2-135m", adapter=tmp_path / "ft", no_adapter=True)


def test_an_installation_without_the_adapter_runs_the_raw_supernet(tmp_path, monkeypatch):
    (tmp_path / "smollm2-135m").mkdir()
    (tmp_path / "smollm2-135m" / "strategy-beam4.json").write_text("{}")
    monkeypatch.setattr(defaults, "PROFILES", tmp_path)
    assert committed_adapter("smollm2-135m") is None
    used = resolve_artefacts("smollm2-135m")
    assert used.strategy == committed_strategy("smollm2-135m") and used.adapter is None
    assert used.adapter_source == "none shipped in this installation"
