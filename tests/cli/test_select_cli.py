import json

import pytest

from amoeba_search.cli import select as select_cli
from amoeba_search.selection.strategy import SelectionStrategy


@pytest.fixture
def model_dir(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("AMOEBA_CACHE", str(tmp_path / "cache"))
    return model_dir


@pytest.fixture
def calib(tmp_path):
    path = tmp_path / "calib.txt"
    words = "river stone light cloud garden window paper music winter number".split()
    path.write_text("\n\n".join(" ".join(words[(i * 3 + j) % 10] for j in range(50)) for i in range(40)))
    return path


def _args(model_dir, calib, out, *extra):
    return ["--model", str(model_dir), "--calib", str(calib), "--split", "train", "--samples", "3",
            "--seq-len", "20", "--min-depth", "3", "--batch-size", "2", "--out", str(out), *extra]


def test_select_writes_a_strategy_that_export_accepts(model_dir, calib, tmp_path, capsys):
    out = tmp_path / "strategy.json"
    assert select_cli.main(_args(model_dir, calib, out, "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["depths"] == [3, 4, 5, 6] and summary["evaluations_total"] > 1
    strategy = SelectionStrategy.load(out)
    assert strategy.calibration["command"].startswith("amoeba-select --model")
    assert "--min-depth 3" in strategy.calibration["command"]
    assert not (tmp_path / "strategy.json.checkpoint.json").exists()

    from amoeba_search.cli import export as export_cli
    assert export_cli.main(["--model", str(model_dir), "--shape", "d4-f0.5-h0.667", "--strategy", str(out),
                            "--out", str(tmp_path / "sub")]) == 0
    # the same command again reproduces the file exactly
    again = tmp_path / "again.json"
    assert select_cli.main(_args(model_dir, calib, again)) == 0
    a, b = json.loads(out.read_text()), json.loads(again.read_text())
    a["calibration"].pop("command"), b["calibration"].pop("command")
    assert a == b
    assert "wrote" in capsys.readouterr().out


def test_resume_continues_from_the_checkpoint(model_dir, calib, tmp_path, capsys, monkeypatch):
    from amoeba_search.selection import objective as objective_module

    out = tmp_path / "s.json"
    assert select_cli.main(_args(model_dir, calib, tmp_path / "ref.json", "--json")) == 0
    reference = json.loads(capsys.readouterr().out)

    real = objective_module.ModelObjective.evaluate

    def crash_at_row_4(self, below, tails):
        if below <= 2:
            raise RuntimeError("simulated crash")
        return real(self, below, tails)

    monkeypatch.setattr(objective_module.ModelObjective, "evaluate", crash_at_row_4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        select_cli.main(_args(model_dir, calib, out, "--json"))
    assert (tmp_path / "s.json.checkpoint.json").exists() and not out.exists()
    monkeypatch.setattr(objective_module.ModelObjective, "evaluate", real)
    capsys.readouterr()
    assert select_cli.main(_args(model_dir, calib, out, "--json", "--resume")) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["resumed_from_row"] == 3
    assert resumed["depth_layers"] == reference["depth_layers"]
    assert resumed["depth_metric"] == reference["depth_metric"]
    assert resumed["evaluations"] < reference["evaluations"]
    assert resumed["evaluations_total"] == reference["evaluations_total"]


@pytest.mark.parametrize("extra, message", [
    (["--samples", "5000"], "not enough text"),
    (["--min-depth", "9"], "minimum depth must lie in 1..6"),
    (["--min-depth", "0"], "minimum depth must lie in 1..6"),
    (["--metric", "ppx"], "did you mean 'ppl'"),
    (["--method", "shortgtp"], "did you mean 'shortgpt'"),
    (["--width-metric", "magnitud"], "did you mean 'magnitude'"),
    (["--keep-last", "5"], "keep-last"),
    (["--beam", "0"], "beam must be at least 1"),
    (["--width-metric", "magnitude", "--bias-compensation"], "use width metric flap or activation"),
    (["--resume"], "nothing to resume"),
])
def test_bad_input_is_one_line_with_exit_code_2(model_dir, calib, tmp_path, capsys, extra, message):
    out = tmp_path / "never.json"
    code = select_cli.main(_args(model_dir, calib, out) + extra)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_wide_beam_is_exhaustive_and_recorded(model_dir, calib, tmp_path, capsys):
    assert select_cli.main(_args(model_dir, calib, tmp_path / "b1.json", "--json")) == 0
    plain = json.loads(capsys.readouterr().out)
    assert select_cli.main(_args(model_dir, calib, tmp_path / "b20.json", "--json", "--beam", "20")) == 0
    wide = json.loads(capsys.readouterr().out)
    assert wide["evaluations_total"] > plain["evaluations_total"]
    # 6 layers: no cell holds more than C(6, 3) = 20 sets, so beam 20 is exhaustive and cannot lose
    assert all(wide["depth_metric"][d] <= plain["depth_metric"][d] * (1 + 1e-9) for d in plain["depth_metric"])
    strategy = SelectionStrategy.load(tmp_path / "b20.json")
    assert strategy.calibration["beam"] == 20 and "--beam 20" in strategy.calibration["command"]


def test_existing_output_needs_overwrite(model_dir, calib, tmp_path, capsys):
    out = tmp_path / "s.json"
    out.write_text("{}")
    assert select_cli.main(_args(model_dir, calib, out)) == 2
    assert "already exists" in capsys.readouterr().err


def test_bias_compensation_is_stored_and_exported(model_dir, calib, tmp_path, capsys):
    out = tmp_path / "s.json"
    assert select_cli.main(_args(model_dir, calib, out, "--bias-compensation", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["bias_compensation"] is True
    strategy = SelectionStrategy.load(out)
    assert strategy.channel_means is not None and "--bias-compensation" in strategy.calibration["command"]

    from transformers import AutoConfig

    from amoeba_search.cli import export as export_cli
    assert export_cli.main(["--model", str(model_dir), "--shape", "d4-f0.5-h1", "--strategy", str(out),
                            "--out", str(tmp_path / "sub")]) == 0
    config = AutoConfig.from_pretrained(tmp_path / "sub")
    assert config.mlp_bias and not config.attention_bias
