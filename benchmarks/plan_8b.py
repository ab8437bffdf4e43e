"""The ``--dry-run`` plans of select, finetune and search for a Llama-3.1-8B-shaped model, from its config alone.

Nothing is loaded or run (the parameter count is checked on the meta device): the numbers are what the
commands print with ``--dry-run --plan-device D --json``, for the settings below, on an H100 and an RTX A5000.
Results: ``results/plan-8b.json``.

    python benchmarks/plan_8b.py              # a few seconds
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amoeba_search.paths import atomic_write_text  # noqa: E402
from amoeba_search.profiling.machine import detect_machine  # noqa: E402

LLAMA_3_1_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
                "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
                "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False}
JOBS = {
    "select": ["amoeba-select", "--samples", "32", "--seq-len", "256", "--beam", "4", "--min-depth", "16",
               "--bias-compensation"],
    "finetune": ["amoeba-finetune", "--steps", "1000", "--batch-size", "4", "--seq-len", "256"],
    "search": ["amoeba-search", "--budget-ms", "40", "--blocks", "8", "--seq-len", "256"],
}
DEVICES = ("h100", "a5000")


def main() -> int:
    out = ROOT / "benchmarks" / "results" / "plan-8b.json"
    machine = detect_machine()  # the plans are computed, not measured: the same on any machine
    results = {"machine": {"cpu_model": machine.cpu_model, "cpu_cores": machine.cpu_cores},
               "config": LLAMA_3_1_8B, "plans": {}}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(LLAMA_3_1_8B))
        for device in DEVICES:
            for job, argv in JOBS.items():
                command = [str(Path(sys.executable).parent / argv[0]), *argv[1:], "--model", tmp, "--dry-run",
                           "--plan-device", device, "--dtype", "bf16", "--json"]
                plan = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
                results["plans"][f"{job}@{device}"] = {"command": [argv[0], *argv[1:], "--model", "CONFIG_DIR",
                                                                  "--dry-run", "--plan-device", device,
                                                                  "--dtype", "bf16"], **plan}
                print(f"{job:9s} {device:6s} {plan['peak_memory_bytes'] / 2**30:7.1f} GiB peak  "
                      f"{plan['estimated_hours']:.3g} h (lower bound)")
    atomic_write_text(out, json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
