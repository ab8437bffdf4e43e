"""Time to derive and save the default model at three shapes, and its load time cold vs cached.

Cold = the first load: transformers dequantizes the packaged GGUF and the result is cached as safetensors.
Cached = every later load. Run: python benchmarks/export_speed.py  ->  benchmarks/results/export_speed.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "export_speed.json"
STRATEGY = Path(__file__).parents[1] / "profiles" / "smollm2-135m" / "strategy.json"
SHAPES = ["d30-f0.75-h0.667", "d24-f0.75-h1", "d16-f0.5-h0.333"]


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ["AMOEBA_CACHE"] = tempfile.mkdtemp(prefix="amoeba-bench-cache-")  # a truly cold cache

    from transformers import AutoModelForCausalLM

    from amoeba_search.models.export import export_subnet
    from amoeba_search.models.loading import load_model
    from amoeba_search.session import open_supernet
    from amoeba_search.shapes import SubnetShape

    _, cold = timed(lambda: load_model("smollm2-135m"))
    cached = [timed(lambda: load_model("smollm2-135m"))[1] for _ in range(args.repeats)]
    strategy = STRATEGY if STRATEGY.is_file() else None
    loaded = open_supernet("smollm2-135m", strategy)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for text in SHAPES:
            shape = SubnetShape.parse(text)
            layers = loaded.layers_for(shape) if strategy else list(range(shape.depth))
            times, loads = [], []
            for i in range(args.repeats):
                out = Path(tmp) / f"{text}-{i}"
                _, seconds = timed(lambda: export_subnet(loaded.supernet, shape, out, layers=layers,
                                                         tokenizer=loaded.tokenizer, provenance=loaded.provenance))
                times.append(seconds)
                loads.append(timed(lambda: AutoModelForCausalLM.from_pretrained(out))[1])
            size = (Path(tmp) / f"{text}-0" / "model.safetensors").stat().st_size
            rows.append({"shape": text, "kept_layers": layers, "export_s_median": statistics.median(times),
                         "export_s_all": times, "load_exported_s_median": statistics.median(loads),
                         "safetensors_mb": round(size / 2**20, 1)})
    result = {
        "benchmark": "export_speed", "model": "smollm2-135m",
        "layers_from": "profiles/smollm2-135m/strategy.json" if strategy else "first d layers (no strategy committed)",
        "load_cold_s": cold, "load_cached_s_median": statistics.median(cached), "load_cached_s_all": cached,
        "exports": rows, "repeats": args.repeats,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "loadavg_1m": os.getloadavg()[0]},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"load cold {cold:.1f}s, cached {result['load_cached_s_median']:.2f}s")
    for row in rows:
        print(f"{row['shape']:>18}: export {row['export_s_median']:.2f}s, load {row['load_exported_s_median']:.2f}s, "
              f"{row['safetensors_mb']} MB")


if __name__ == "__main__":
    main()
