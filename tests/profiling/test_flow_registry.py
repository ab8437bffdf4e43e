import pytest

from amoeba_search.profiling import flows
from amoeba_search.profiling.flows import (FLOWS, FlowUnavailable, UnknownFlowError, flow_availability, get_flow,
                                           load_flow_class, resolve_flow_name)


def test_registry_names_every_flow_lazily():
    assert set(FLOWS) == {"torch", "llamacpp", "ort", "openvino", "tensorrt-llm", "mlc"}
    assert all(":" in target for target in FLOWS.values())
    assert resolve_flow_name("PyTorch") == "torch"
    assert resolve_flow_name("llama.cpp") == "llamacpp"
    assert resolve_flow_name("trtllm") == "tensorrt-llm"


def test_unknown_flow_suggests_close_names():
    with pytest.raises(UnknownFlowError, match="did you mean 'torch'"):
        resolve_flow_name("troch")
    with pytest.raises(UnknownFlowError, match="did you mean 'openvino'"):
        resolve_flow_name("openvio")


def test_flows_that_cannot_run_say_why():
    status = flow_availability()
    assert status["torch"] is None
    for name in ("tensorrt-llm", "mlc"):  # no NVIDIA GPU and no vendor wheel on this machine
        reason = status[name]
        assert isinstance(reason, str) and reason.strip()


def test_missing_plugin_module_is_reported(monkeypatch):
    monkeypatch.setitem(FLOWS, "ghost", "amoeba_search.profiling.flows.ghost_flow:GhostFlow")
    with pytest.raises(FlowUnavailable, match="not installed"):
        load_flow_class("ghost")
    assert "not installed" in flow_availability(["ghost"])["ghost"]


def test_flow_options_are_checked():
    assert get_flow("torch", compile=True).compile
    with pytest.raises(ValueError, match="takes no option"):
        get_flow("torch", turbo=True)


def test_register_flow_validates_target():
    with pytest.raises(ValueError, match="module:ClassName"):
        flows.register_flow("x", "no_colon")
