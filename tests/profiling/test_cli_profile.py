import json

import pytest

from amoeba_search.cli.profile import main
from amoeba_search.profiling.lut import LatencyTable
from tests.conftest import tiny_config
from tests.profiling import fakes


class TinyFakeFlow(fakes.FakeFlow):
    def __init__(self):
        from amoeba_search.shapes import ModelDims

        super().__init__(ModelDims.from_config(tiny_config()))


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_profile_then_resume_with_json_summary(env, capsys):
    args = ["--device", "cpu", "--flow", "fake", "--model", str(env / "tiny" / "config.json"),
            "--profiles", str(env / "profiles"), "--prompt-len", "8", "--context-len", "12", "--holdout", "3", "--threads", "1",
            "--json"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    summary = json.loads(out)
    table_path = env / "profiles" / "tiny" / "cpu" / "fake-p8-c12-t1.csv"
    assert summary["out"] == str(table_path) and summary["measured_now"] == summary["planned"]
    assert summary["evaluation"]["holdout_rows"] == 3
    assert (env / "profiles" / "tiny" / "cpu" / "fake-p8-c12-t1.eval.json").exists()
    assert json.loads((env / "profiles" / "tiny" / "cpu" / "device.json").read_text())["provenance"] == "measured"
    assert len(LatencyTable.load(table_path)) == summary["planned"]
    code, out, err = run(capsys, *args)
    assert code == 2 and "--resume" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, *args, "--resume")
    assert code == 0 and json.loads(out)["measured_now"] == 0


@pytest.mark.parametrize("argv,code,needle", [
    (["--device", "a500", "--flow", "torch"], 2, "did you mean 'a5000'"),
    (["--device", "cpu", "--flow", "onnx-rt"], 2, "did you mean"),
    (["--device", "h100", "--flow", "torch"], 2, "--force-device"),
    (["--device", "cpu", "--flow", "torch", "--prompt-len", "32", "--context-len", "16"], 2, "must exceed"),
    (["--flow", "torch"], 2, "--device and --flow are required"),
])
def test_bad_input_gives_one_line_and_nonzero_exit(env, capsys, argv, code, needle):
    got, out, err = run(capsys, *argv, "--profiles", str(env / "profiles"))
    assert got == code and needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_list_flows_and_devices(env, capsys):
    code, out, _ = run(capsys, "--list-flows", "--json")
    status = json.loads(out)
    assert code == 0 and status["torch"]["available"] and not status["tensorrt-llm"]["available"]
    assert status["tensorrt-llm"]["reason"]
    code, out, _ = run(capsys, "--list-devices", "--profiles", str(env / "profiles"))
    assert code == 0 and "a5000" in out and "orin-nx" in out and "* cpu" in out
