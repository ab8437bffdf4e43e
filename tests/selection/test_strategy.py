import json

import pytest
import torch

from amoeba_search.fingerprint import model_fingerprint
from amoeba_search.models.supernet import Supernet
from amoeba_search.selection.pipeline import SelectionSettings, select_strategy
from amoeba_search.selection.strategy import SelectionStrategy, StrategyMismatchError
from tests.conftest import tiny_model, tiny_tokenizer


@pytest.fixture
def calib_text(tmp_path, monkeypatch):
    monkeypatch.setenv("AMOEBA_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "calib.txt"
    words = "river stone light cloud garden window paper music winter number".split()
    path.write_text("\n\n".join(" ".join(words[(i * 7 + j) % 10] for j in range(60)) for i in range(60)))
    return path


def _run(calib_text, method="dp", **kw):
    model = tiny_model()
    fingerprint = model_fingerprint(model, "tiny")  # of the plain model, before the view reorders heads
    supernet = Supernet(model)
    settings = SelectionSettings(method=method, calib=str(calib_text), split="train", samples=4, seq_len=24,
                                 min_depth=3, batch_size=2, **kw)
    return select_strategy(supernet, tiny_tokenizer(), fingerprint, settings, command="x")


@pytest.mark.parametrize("method", ["dp", "shortgpt", "angular", "ppl-rank", "drop-last"])
def test_every_method_makes_a_valid_strategy_that_round_trips(calib_text, tmp_path, method):
    run = _run(calib_text, method)
    strategy = run.strategy
    assert strategy.depths == [3, 4, 5, 6]
    assert all(strategy.depth_metric[d] > 1 for d in strategy.depths)
    path = tmp_path / "s.json"
    strategy.save(path)
    again = SelectionStrategy.load(path)
    assert again.to_dict() == strategy.to_dict()
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1 and data["calibration"]["method"] == method
    assert data["calibration"]["tokens"] == 4 * 24 and data["calibration"]["command"] == "x"
    again.check_model(model_fingerprint(tiny_model(), "tiny"))
    with pytest.raises(StrategyMismatchError, match="another model"):
        again.check_model(model_fingerprint(tiny_model(seed=3), "other"))


def test_selection_is_deterministic(calib_text):
    a, b = _run(calib_text), _run(calib_text)
    assert a.strategy.to_dict() == b.strategy.to_dict()


def test_dp_strategy_metric_matches_a_fresh_evaluation(calib_text):
    from amoeba_search.data import token_blocks
    from amoeba_search.evaluation.perplexity import perplexity
    from amoeba_search.shapes import SubnetShape

    strategy = _run(calib_text).strategy
    supernet = Supernet(tiny_model())
    from amoeba_search.selection.calibration import spread_blocks

    blocks = spread_blocks(token_blocks(str(calib_text), tiny_tokenizer(), split="train", seq_len=24), 4)
    for depth in strategy.depths:
        supernet.set_active(SubnetShape(depth), strategy.layers_for(depth))
        assert perplexity(supernet, blocks).ppl == pytest.approx(strategy.depth_metric[depth], rel=1e-5)


def test_malformed_strategies_are_refused(calib_text, tmp_path):
    data = _run(calib_text).strategy.to_dict()
    path = tmp_path / "bad.json"
    for mutate, message in [
        (lambda d: d["depths"]["4"].update(layers=[0, 1, 2]), "depth 4"),
        (lambda d: d["ffn_orders"][0].__setitem__(0, d["ffn_orders"][0][1]), "permutation"),
        (lambda d: d["head_orders"][2].pop(), "KV groups"),
        (lambda d: d.update(schema_version=99), "schema version"),
    ]:
        broken = json.loads(json.dumps(data))
        mutate(broken)
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=message):
            SelectionStrategy.load(path)


def test_digest_names_the_content_not_the_file(tmp_path):
    from amoeba_search.search.oracle import perplexity_oracle
    from tests.finetune.helpers import tiny_loaded

    loaded = tiny_loaded()
    strategy = loaded.strategy
    strategy.save(tmp_path / "a" / "s.json")
    strategy.save(tmp_path / "b.json")
    moved = SelectionStrategy.load(tmp_path / "b.json")
    assert moved.digest() == SelectionStrategy.load(tmp_path / "a" / "s.json").digest() == strategy.digest()
    other = SelectionStrategy(strategy.fingerprint, {**strategy.depth_layers, 3: [0, 1, 5]})
    assert other.digest() != strategy.digest()
    blocks = torch.randint(3, 259, (2, 16))
    settings = perplexity_oracle(loaded, blocks, data_settings={}).settings
    assert settings["strategy"] == strategy.digest()


def test_bias_compensation_stores_channel_means_that_round_trip(calib_text, tmp_path):
    plain = _run(calib_text).strategy
    model = tiny_model()
    settings = SelectionSettings(calib=str(calib_text), split="train", samples=4, seq_len=24, min_depth=3,
                                 batch_size=2)
    strategy = select_strategy(Supernet(model), tiny_tokenizer(), model_fingerprint(tiny_model(), "tiny"), settings,
                               command="x", bias_compensation=True).strategy
    assert "channel_means" not in plain.to_dict()  # an absent key keeps the digest of older strategies
    assert strategy.depth_layers == plain.depth_layers and strategy.ffn_orders == plain.ffn_orders
    means = strategy.channel_means
    assert len(means["ffn"]) == 6 and len(means["ffn"][0]) == 64 and len(means["attn"][0]) == 6 * 8
    assert strategy.digest() != plain.digest()
    path = tmp_path / "s.json"
    strategy.save(path)
    assert SelectionStrategy.load(path).to_dict() == strategy.to_dict()
    broken = json.loads(path.read_text())
    broken["channel_means"]["attn"][1].pop()
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="channel_means must hold"):
        SelectionStrategy.load(path)
    with pytest.raises(ValueError, match="use width metric flap or activation"):
        select_strategy(Supernet(tiny_model()), tiny_tokenizer(), {}, SelectionSettings(
            calib=str(calib_text), split="train", samples=4, seq_len=24, min_depth=3, width_metric="magnitude"),
            bias_compensation=True)
