"""The composition root: defaults per model, the library's fine-tuning equal to the command's, committed files
only read, and the packaging facts (py.typed, the profiles/ tree as data files, a torch-free evaluation import)."""
from __future__ import annotations

import configparser
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from amoeba_search import session
from amoeba_search.defaults import committed_adapter, committed_strategy
from amoeba_search.resources import committed_profiles, is_committed
from tests.conftest import tiny_model, tiny_tokenizer
from tests.finetune.helpers import DEPTH_LAYERS, tiny_loaded, tiny_space

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_resolve_through_the_session_for_the_default_model_only():
    default = session.defaults_for("smollm2-135m")
    assert default.strategy == committed_strategy("smollm2-135m")
    assert default.adapter == committed_adapter("smollm2-135m")
    assert default.strategy is not None and is_committed(default.strategy)
    for other in ("my-model", "/models/llama-3-8b", "Qwen/Qwen2.5-0.5B"):
        none = session.defaults_for(other)
        assert none.strategy is None and none.adapter is None
        assert none.strategy_source == "none given"


def test_adapter_config_scales_the_rank_and_keeps_the_dataclass_defaults():
    from amoeba_search.finetune.smol import SMoLConfig, default_rank

    dims = tiny_loaded().supernet.dims
    config = session.adapter_config(dims)
    assert config.rank == default_rank(dims) and config.alpha == 2.0 * config.rank
    assert (config.num_experts, config.top_k, config.noise_std) == (SMoLConfig().num_experts, SMoLConfig().top_k,
                                                                     SMoLConfig().noise_std)
    assert session.adapter_config(dims, rank=4, alpha=None).alpha == 8.0


def test_cli_defaults_come_from_the_dataclasses_with_the_published_values():
    from amoeba_search.cli.finetune import build_parser
    from amoeba_search.finetune.smol import SMoLConfig
    from amoeba_search.finetune.trainer import TrainConfig

    train, smol = TrainConfig(), SMoLConfig()
    assert (train.lr, train.seq_len) == (5e-4, 128)  # the shipped adapter's settings (README, Results)
    args = build_parser().parse_args([])
    assert (args.lr, args.seq_len, args.steps, args.batch_size) == (train.lr, train.seq_len, train.steps,
                                                                   train.batch_size)
    assert (args.experts, args.top_k, args.gate_noise) == (smol.num_experts, smol.top_k, smol.noise_std)
    assert "peak learning rate" in build_parser().format_help()


def test_library_finetune_centres_the_gate_exactly_as_the_cli(tmp_path):
    from amoeba_search.cli.finetune import main
    from amoeba_search.finetune.data import load_training_data
    from amoeba_search.finetune.smol import SMoLAdapter
    from amoeba_search.finetune.trainer import TrainConfig
    from amoeba_search.fingerprint import model_fingerprint
    from amoeba_search.session import open_supernet
    from amoeba_search.strategy import SelectionStrategy

    model_dir = tmp_path / "tiny"
    tiny_model().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    strategy = tmp_path / "strategy.json"
    SelectionStrategy(model_fingerprint(tiny_model(), "tiny"), {d: list(v) for d, v in DEPTH_LAYERS.items()}).save(strategy)
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(f"document {i}: " + "the cat sat on the mat and looked around " * 12
                                for i in range(40)))
    assert main(["--model", str(model_dir), "--strategy", str(strategy), "--data", str(text),
                 "--out", str(tmp_path / "cli"), "--steps", "1", "--batch-size", "2", "--seq-len", "16",
                 "--rank", "4", "--experts", "3", "--random-shapes", "1", "--warmup-steps", "1",
                 "--max-examples", "8", "--device", "cpu", "--dtype", "fp32", "--json"]) == 0

    loaded = open_supernet(str(model_dir), strategy, dtype=torch.float32, device="cpu")
    train = TrainConfig(steps=1, batch_size=2, seq_len=16, warmup_steps=1, num_random=1)
    data = load_training_data(str(text), loaded.tokenizer, seq_len=train.seq_len, max_examples=8)
    session.finetune(loaded, data, tmp_path / "lib", train=train,
                     smol=session.adapter_config(loaded.supernet.dims, rank=4, num_experts=3))

    cli = SMoLAdapter.load(tmp_path / "cli", loaded.supernet)
    library = loaded.adapter
    assert library is not None and library.gate.center.abs().sum() > 0  # centred, not the zero default
    assert torch.equal(library.gate.center, cli.gate.center)
    mine, theirs = library.state_dict(), cli.state_dict()
    assert mine.keys() == theirs.keys()
    for key in mine:  # the same run: the same trained weights
        torch.testing.assert_close(mine[key], theirs[key], rtol=1e-5, atol=1e-6)


def test_new_adapter_centres_on_the_space_routes():
    loaded = tiny_loaded()
    space = tiny_space(loaded)
    adapter = session.new_adapter(loaded, space, session.adapter_config(loaded.supernet.dims, rank=2, num_experts=2))
    expected = torch.stack([adapter.gate.raw_features(s, l) for s, l in loaded.routes(space)]).mean(0)
    torch.testing.assert_close(adapter.gate.center, expected.to(adapter.gate.center))
    assert adapter.gate.center.dtype == torch.float32


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_refit_never_writes_the_committed_predictor(tmp_path, monkeypatch):
    from amoeba_search.search.job import fit_or_load_predictor
    from amoeba_search.search.oracle import MetricOracle

    monkeypatch.setenv("AMOEBA_CACHE", str(tmp_path / "cache"))
    committed = committed_profiles() / "smollm2-135m" / "predictor-ppl-wiki.json"
    assert committed.is_file()
    before = (_sha(committed), committed.stat().st_mtime_ns)
    loaded = tiny_loaded()
    space = tiny_space(loaded)
    oracle = MetricOracle(lambda s: 10.0 + 2 * (6 - s.depth) + 3 * (1 - s.ffn_ratio) + (1 - s.heads_ratio),
                          {"data": "wiki", "blocks": 4, "test": "other settings than the committed fit"})
    for given in (None, committed):  # the default, and the committed file named with --predictor
        path = session.predictor_path("smollm2-135m", committed.name, space, oracle, given=given)
        assert path == tmp_path / "cache" / "predictors" / "smollm2-135m" / committed.name
        fit_or_load_predictor(space, oracle, path, n_train=12, n_holdout=4)
        assert path.is_file()
    assert (_sha(committed), committed.stat().st_mtime_ns) == before
    out = session.predictor_path("smollm2-135m", committed.name, space, oracle, given=committed, out=tmp_path / "o")
    assert out == tmp_path / "o" / committed.name
    mine = tmp_path / "mine.json"  # a user's own file is theirs to rewrite
    assert session.predictor_path("smollm2-135m", committed.name, space, oracle, given=mine) == mine


def test_py_typed_is_shipped():
    assert (ROOT / "amoeba_search" / "py.typed").is_file()
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert "py.typed" in config["options.package_data"]["amoeba_search"]


def test_every_committed_profiles_folder_is_installed_as_data_files():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    sources = [line.strip() for value in config["options.data_files"].values() for line in value.splitlines()
               if line.strip()]
    covered = {str(Path(source).parent) for source in sources}
    folders = {str(p.relative_to(ROOT)) for p in (ROOT / "profiles").rglob("*") if p.is_dir()} | {"profiles"}
    assert folders <= covered, f"add these profiles/ folders to setup.cfg [options.data_files]: {folders - covered}"


def test_committed_profiles_are_found_in_an_installed_prefix(tmp_path, monkeypatch):
    from amoeba_search import resources

    installed = tmp_path.joinpath(*resources.DATA_SUBDIR)
    installed.mkdir(parents=True)
    monkeypatch.setattr(resources, "CHECKOUT", tmp_path / "site-packages" / "profiles")  # as in a wheel install
    monkeypatch.setattr(resources.sysconfig, "get_path", lambda name: str(tmp_path))
    assert resources.committed_profiles() == installed
    assert resources.is_committed(installed / "smollm2-135m" / "predictor-ppl-wiki.json")


def test_importing_evaluation_does_not_import_torch():
    code = ("import sys, amoeba_search.evaluation as e; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'task_items' in dir(e)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_strategy_moved_below_the_stages_and_the_old_name_still_works():
    from amoeba_search.selection.strategy import SelectionStrategy as old
    from amoeba_search.strategy import SelectionStrategy

    assert old is SelectionStrategy
    source = (ROOT / "amoeba_search" / "models" / "session.py").read_text()
    assert "selection.strategy" not in source and "from amoeba_search.finetune" not in source.split("def ")[0]


@pytest.mark.parametrize("module", ["amoeba_search.plots", "amoeba_search.session", "amoeba_search.evaluation"])
def test_import_changes_no_global_state(module):
    code = (f"import matplotlib; before = matplotlib.get_backend(); import {module}; "
            "assert matplotlib.get_backend() == before, 'backend switched on import'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
