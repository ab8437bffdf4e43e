"""Where latency tables live (one rule for amoeba-profile, amoeba-search and the notebooks), the line that says a
table was measured on another machine, and what a table with too few rows lacks. Tiny synthetic tables only."""
import json
from argparse import Namespace

import pytest

import amoeba_search.profiling as profiling
from amoeba_search.profiling import model_slug, table_path, table_roots
from amoeba_search.profiling.lut import LatencyTable, table_machine_warning
from amoeba_search.profiling.machine import (ISA_FLAGS, cpu_label, isa_summary, machine_mismatch, parse_machine_label,
                                             short_cpu_name)
from amoeba_search.profiling.table_schema import LatencyTableError, append_row
from tests.profiling.fakes import machine, table_row

XEON_ISA = ("amx_bf16", "amx_tile", "avx2", "avx512f", "fma")
EPYC_ISA = ("avx2", "fma")


@pytest.fixture
def places(tmp_path, monkeypatch):
    """A fake checkout (its committed profiles/), a working directory and an $AMOEBA_PROFILES, all empty."""
    checkout, cwd, env = tmp_path / "checkout" / "profiles", tmp_path / "work", tmp_path / "env"
    for folder in (checkout, cwd, env):
        folder.mkdir(parents=True)
    monkeypatch.setattr(profiling, "CHECKOUT_PROFILES", checkout)
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("AMOEBA_PROFILES", raising=False)
    return Namespace(checkout=checkout, cwd=cwd / "profiles", env=env)


def _put(root, model="smollm2-135m", device="cpu", flow="torch"):
    path = root / model / device / f"{flow}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x\n")
    return path


# -- model names --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, slug", [
    (None, "smollm2-135m"), ("", "smollm2-135m"), ("smollm2-135m", "smollm2-135m"),
    ("/models/SmolLM2-360M/", "smollm2-360m"), ("out/tiny/config.json", "tiny"), ("w/Llama 3.2 1B.Q4_K_M.gguf", "llama-3.2-1b.q4_k_m"),
    ("HuggingFaceTB/SmolLM2-135M", "smollm2-135m"), ("..", "model"), ("../..", "model"), ("/", "model"),
    ("a/../../etc", "etc"), ("...hidden", "hidden"), ("x\\y\\z.gguf", "z"),
])
def test_model_slug_is_the_alias_or_a_safe_basename(spec, slug):
    got = model_slug(spec)
    assert got == slug
    assert "/" not in got and "\\" not in got and ".." not in got and not got.startswith(".")


def test_default_model_slug_is_the_packaged_default():
    from amoeba_search.models.loading import DEFAULT_MODEL

    assert model_slug(None) == DEFAULT_MODEL


# -- reading --------------------------------------------------------------------------------------------------

def test_committed_tables_are_found_from_any_working_directory(places):
    committed = _put(places.checkout)
    assert table_path("smollm2-135m", "cpu", "torch") == committed
    assert table_path(None, "cpu", "torch") == committed  # the default model


def test_reading_prefers_env_then_cwd_then_checkout(places, monkeypatch):
    committed = _put(places.checkout)
    mine = _put(places.cwd)
    assert table_path("smollm2-135m", "cpu", "torch") == mine
    monkeypatch.setenv("AMOEBA_PROFILES", str(places.env))
    assert table_path("smollm2-135m", "cpu", "torch") == mine  # not in $AMOEBA_PROFILES: the next place
    env = _put(places.env)
    assert table_path("smollm2-135m", "cpu", "torch") == env
    assert table_roots() == [places.env, places.cwd, places.checkout]
    assert committed.exists()


def test_a_missing_table_names_every_place_looked_and_the_old_layout(places, monkeypatch):
    monkeypatch.setenv("AMOEBA_PROFILES", str(places.env))
    with pytest.raises(FileNotFoundError) as err:
        table_path("tiny", "cpu", "ort")
    text = str(err.value)
    for root in (places.env, places.cwd, places.checkout):
        assert str(root / "tiny" / "cpu" / "ort.csv") in text
    assert "amoeba-profile --device cpu --flow ort --model tiny" in text
    old = places.cwd / "cpu" / "ort.csv"
    old.parent.mkdir(parents=True)
    old.write_text("x\n")
    with pytest.raises(FileNotFoundError, match="old layout at .*cpu/ort.csv: move it to .*tiny/cpu/ort.csv"):
        table_path("tiny", "cpu", "ort")


@pytest.mark.parametrize("device, flow", [("../cpu", "torch"), ("cpu", "a/b"), ("..", "torch"), ("", "torch")])
def test_device_and_flow_must_be_plain_names(places, device, flow):
    with pytest.raises(ValueError, match="cannot name a table file"):
        table_path("tiny", device, flow)


# -- writing ------------------------------------------------------------------------------------------------

def test_writing_goes_to_env_else_cwd_never_the_checkout(places, monkeypatch):
    _put(places.checkout, model="tiny")
    assert table_path("tiny", "cpu", "torch", for_writing=True) == places.cwd / "tiny" / "cpu" / "torch.csv"
    monkeypatch.setenv("AMOEBA_PROFILES", str(places.env))
    assert table_path("tiny", "cpu", "torch", for_writing=True) == places.env / "tiny" / "cpu" / "torch.csv"
    assert table_path("tiny", "cpu", "torch", for_writing=True, profiles=places.cwd) == \
        places.cwd / "tiny" / "cpu" / "torch.csv"


def test_a_default_path_never_overwrites_a_committed_table(places, monkeypatch):
    committed = _put(places.checkout)
    monkeypatch.chdir(places.checkout.parent)  # standing in the checkout: ./profiles is the committed folder
    with pytest.raises(FileExistsError, match="committed table .*AMOEBA_PROFILES.*--out"):
        table_path("smollm2-135m", "cpu", "torch", for_writing=True)
    with pytest.raises(FileExistsError):
        table_path("smollm2-135m", "cpu", "torch", for_writing=True, profiles=places.checkout)
    # a new table of the checkout may be written there, and the committed one is still read
    assert table_path("smollm2-135m", "cpu", "ort", for_writing=True) == places.checkout / "smollm2-135m" / "cpu" / "ort.csv"
    assert table_path("smollm2-135m", "cpu", "torch") == committed
    assert committed.read_text() == "x\n"


def test_profile_cli_default_out_follows_the_rule(places, monkeypatch):
    from amoeba_search.cli.profile import DEFAULT_CONTEXT, DEFAULT_PROMPT, _default_out

    args = Namespace(device="cpu", dtype="bf16", batch=1, prompt_len=DEFAULT_PROMPT, context_len=DEFAULT_CONTEXT,
                     compile=False, threads=None)
    assert _default_out(None, args, "torch", "tiny") == places.cwd / "tiny" / "cpu" / "torch-bf16.csv"
    monkeypatch.setenv("AMOEBA_PROFILES", str(places.env))
    assert _default_out(None, args, "torch", "/x/My Model.gguf") == places.env / "my-model" / "cpu" / "torch-bf16.csv"


def test_search_cli_finds_the_table_by_model_device_and_flow(places, tmp_path):
    from amoeba_search.session import table_location  # what amoeba-search's resolve_table looks up

    committed = _put(places.checkout, model="tiny")
    assert table_location(str(tmp_path / "tiny"), "cpu", "torch") == committed
    given = tmp_path / "given.csv"
    assert table_location("tiny", "cpu", "torch", table=given) == given


def test_the_committed_tables_sit_under_the_default_model():
    root = profiling.CHECKOUT_PROFILES
    if not root.is_dir():
        pytest.skip("no checkout")
    assert (root / "smollm2-135m" / "cpu" / "torch.csv").is_file()
    assert (root / "smollm2-135m" / "cpu" / "device.json").is_file()
    assert not (root / "cpu").exists()


# -- the machine a table was measured on ---------------------------------------------------------------------

def _table(tmp_path, machine_label="AMD EPYC (2 cores)", isa=None, name="torch.csv"):
    path = tmp_path / "tiny" / "cpu" / name
    for d in (3, 6):
        for f in (0.5, 1.0):
            row = table_row(f"d{d}-f{f:g}-h1", prefill=d * f, decode=d * f / 4, machine=machine_label)
            if isa is not None:
                row["extra"] = json.dumps({"threads": 2, "isa": list(isa)})
            append_row(path, row)
    return LatencyTable.load(path)


def test_same_machine_gives_no_line(tmp_path):
    here = machine(cpu_model="AMD EPYC Processor", cpu_cores=2, isa=EPYC_ISA)
    assert table_machine_warning(_table(tmp_path, isa=EPYC_ISA, name="isa.csv"), here) is None


def test_a_table_without_isa_flags_is_only_a_match_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = machine(cpu_model="AMD EPYC Processor", cpu_cores=2, isa=EPYC_ISA)
    line = table_machine_warning(_table(tmp_path), here)  # older tables recorded no ISA flags
    assert line == ("latency table tiny/cpu/torch.csv was measured on AMD EPYC (2 cores) and records no ISA flags, "
                    "so it matches this AMD EPYC (2 cores, AVX2) by name and cores only: machines sold under one "
                    "name can differ in speed; re-measure here (amoeba-profile) for a table that is this machine's")
    assert table_machine_warning(_table(tmp_path, name="old.csv"), machine(cpu_model="AMD EPYC", cpu_cores=2)) is None


def test_another_cpu_gives_one_line_with_both_machines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = machine(cpu_model="Intel(R) Xeon(R) Processor", cpu_cores=2, isa=XEON_ISA)
    line = table_machine_warning(_table(tmp_path), here)
    assert line == ("latency table tiny/cpu/torch.csv was measured on AMD EPYC (2 cores), this is Intel Xeon "
                    "(2 cores, AVX-512, AMX): its latencies are that machine's; verification here measures this "
                    "machine, so expect them to differ")
    assert "\n" not in line


def test_cores_and_isa_differences_are_mismatches_too(tmp_path):
    table = _table(tmp_path, machine_label="Intel(R) Xeon(R) Processor (2 cores)", isa=XEON_ISA)
    assert table_machine_warning(table, machine(cpu_model="Intel(R) Xeon(R) Processor", cpu_cores=2, isa=XEON_ISA)) is None
    fewer = table_machine_warning(table, machine(cpu_model="Intel(R) Xeon(R) Processor", cpu_cores=4, isa=XEON_ISA))
    assert "measured on Intel Xeon (2 cores, AVX-512, AMX), this is Intel Xeon (4 cores, AVX-512, AMX)" in fewer
    no_amx = table_machine_warning(table, machine(cpu_model="Intel(R) Xeon(R) Processor", cpu_cores=2,
                                                  isa=("avx2", "avx512f", "fma")))
    assert "(2 cores, AVX-512, AMX), this is Intel Xeon (2 cores, AVX-512)" in no_amx
    subtle = machine_mismatch("Xeon (2 cores)", machine(cpu_model="Xeon", cpu_cores=2, isa=("avx2", "fma")),
                              table_isa=("avx2",))
    assert "this is Xeon (2 cores, AVX2) with +fma" in subtle


def test_gpu_tables_compare_gpu_names():
    assert machine_mismatch("NVIDIA H100 80GB HBM3", machine(gpus=("NVIDIA H100 80GB HBM3",))) is None
    line = machine_mismatch("NVIDIA H100 80GB HBM3", machine(gpus=("NVIDIA RTX A5000",)))
    assert "measured on NVIDIA H100 80GB HBM3, this is NVIDIA RTX A5000" in line
    assert "without a GPU" in machine_mismatch("NVIDIA H100 80GB HBM3", machine())


def test_machine_helpers():
    assert parse_machine_label("AMD EPYC 7B13 (64 cores)") == ("AMD EPYC 7B13", 64)
    assert parse_machine_label("NVIDIA RTX A5000") == ("NVIDIA RTX A5000", None)
    assert short_cpu_name("AMD EPYC 7B13 64-Core Processor") == "AMD EPYC 7B13"
    assert short_cpu_name("Intel(R) Xeon(R) CPU @ 2.20GHz") == "Intel Xeon @ 2.20GHz"
    assert isa_summary(XEON_ISA) == ["AVX-512", "AMX"] and isa_summary(("asimd", "sve")) == ["NEON", "SVE"]
    assert cpu_label("Intel(R) Xeon(R) Processor", 2, ()) == "Intel Xeon (2 cores)"
    assert set(XEON_ISA) <= set(ISA_FLAGS)
    assert "AMX" in machine(isa=XEON_ISA).summary()


def test_profiler_rows_record_the_isa(tmp_path):
    from amoeba_search.profiling.design import PlannedShape
    from amoeba_search.profiling.devices import BUILTIN
    from amoeba_search.profiling.flows.base import Measurement, MeasureSettings
    from amoeba_search.profiling.model_source import ModelSource
    from amoeba_search.profiling.profiler import ProfileRequest, _row
    from amoeba_search.shapes import SubnetShape
    from tests.conftest import tiny_config

    request = ProfileRequest(device=BUILTIN["cpu"], machine=machine(isa=XEON_ISA), flow_name="fake",
                             source=ModelSource("tiny", "tiny", tiny_config()), out=tmp_path / "t.csv",
                             settings=MeasureSettings(prompt_len=4, decode_tokens=2))
    m = Measurement(prefill_ms=[1.0, 1.1], decode_ms_per_token=[0.5, 0.6], peak_memory_bytes=None, extra={})
    row = _row(request, PlannedShape(SubnetShape(2, 1.0, 1.0), "design"), m,
               {"prefill_energy_mj": None, "decode_energy_mj_per_token": None}, {}, 0.1, None)
    assert row["extra"]["isa"] == list(XEON_ISA)
    append_row(tmp_path / "t.csv", row)
    assert LatencyTable.load(tmp_path / "t.csv").isa() == XEON_ISA


# -- too few rows -------------------------------------------------------------------------------------------

def test_too_few_rows_says_what_the_table_has_and_what_to_measure(tmp_path):
    path = tmp_path / "one.csv"
    append_row(path, table_row("d20-f1-h1", prefill=20.0, decode=5.0))
    append_row(path, table_row("d20-f1-h1", prefill=21.0, decode=5.1))
    table = LatencyTable.load(path)
    with pytest.raises(LatencyTableError) as err:
        table.predict("d20-f1-h1")
    text = str(err.value)
    assert "too few rows to fit any latency model" in text
    assert "depths [20], FFN ratios [1.0], heads ratios [1.0]" in text
    assert "2 depths and a 2x2 grid of FFN x heads ratios" in text and "measure at least 2 depths" in text
    suggested = text.split("--shapes ")[1].split()[0].split(",")
    assert "d20-f1-h1" not in suggested and len(suggested) == 7  # the 2 x 2 x 2 grid less what is measured
    for shape in suggested:  # measuring what it suggests makes every model fit
        d, f, h = (float(x[1:]) for x in shape.split("-"))
        append_row(path, table_row(shape, prefill=d * (f + h), decode=d * (f + h) / 4))
    grown = LatencyTable.load(path)
    for method in ("per-width", "shared-intercept", "linear"):
        assert grown.predict("d15-f0.75-h0.75", method=method) > 0


def test_too_few_rows_with_two_depths_on_different_widths(tmp_path):
    path = tmp_path / "two.csv"
    append_row(path, table_row("d10-f0.5-h1", prefill=10.0, decode=2.0))
    append_row(path, table_row("d20-f1-h1", prefill=20.0, decode=4.0))
    with pytest.raises(LatencyTableError, match=r"depths \[10, 20\], FFN ratios \[0.5, 1.0\], heads ratios \[1.0\]"):
        LatencyTable.load(path).predict("d20-f1-h1")


# -- amoeba-search end to end: the table found by the rule, the line on stderr and in front.json -------------

from tests.cli.test_search_cli import setup  # noqa: E402,F401  (the tiny model, strategy and task fixture)


def test_search_prints_the_machine_line_and_records_it(setup, tmp_path, monkeypatch, capsys):
    import amoeba_search.profiling.machine as machine_mod
    from amoeba_search.cli import search as search_cli
    from amoeba_search.profiling.model_source import table_fingerprint
    from tests.profiling.test_lut import synthetic_rows
    from transformers import AutoConfig

    model_dir, strategy, task = setup
    env = tmp_path / "env"
    monkeypatch.setenv("AMOEBA_PROFILES", str(env))
    fingerprint = table_fingerprint(str(model_dir), AutoConfig.from_pretrained(model_dir))
    table = env / "tiny" / "cpu" / "torch.csv"
    for row in synthetic_rows():
        append_row(table, {**row, "model_fingerprint": fingerprint, "machine": "AMD EPYC (2 cores)"})
    monkeypatch.setattr(machine_mod, "detect_machine",
                        lambda: machine(cpu_model="Intel(R) Xeon(R) Processor", cpu_cores=2, isa=XEON_ISA))
    out = tmp_path / "out"
    args = ["--budget-ms", "1000", "--device", "cpu", "--flow", "torch", "--model", str(model_dir),
            "--strategy", str(strategy), "--method", "exhaustive", "--out", str(out), "--objective", "toy_calib",
            "--task-dir", str(task.parent), "--task-limit", "3", "--verify", "none", "--json"]
    assert search_cli.main(args) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    warning = summary["table_machine_warning"]
    assert warning.startswith("latency table ") and "measured on AMD EPYC (2 cores), this is Intel Xeon" in warning
    assert f"amoeba-search: warning: {warning}" in captured.err.splitlines()
    assert summary["settings"]["table"] == str(table)
    front = json.loads((out / "front.json").read_text())
    assert front["settings"]["table_machine_warning"] == warning
