"""Search workers share the work: two workers on one storage split the accuracy predictor's sample.

Claim: a study's expensive evaluations are claimed and shared through the Optuna storage, so N workers split
them with no duplicates and lose none; wall time for the shared sample <= 0.6x of one worker's.

Phases, each on a fresh storage of one kind (``--storage journal``, the default: a journal file; ``postgres``: a
PostgreSQL server of our own started in a temporary directory, see ``tests/postgres_server.py``):

- ``one``: one worker alone evaluates the predictor's design sample: ``design_sample(space, --sample, seed=0)``,
  the first shapes of the sample ``run_job`` fits the accuracy predictor on;
- ``shared``: ``--workers`` workers (2) evaluate the same sample together.

What is timed: ``oracle(sample)`` with ``oracle.shared = SharedEvaluations(storage, evaluations_study_name(...))``,
which is what ``run_job`` sets up and ``fit_or_load_predictor`` calls (the search and the verification are not
run). The clock starts when every worker has passed a barrier (model loaded, one warm-up forward pass outside the
oracle, storage and evaluations study opened) and stops when the last worker holds all the sample's values.
Every worker is its own process (spawn) with ``--threads`` torch threads (1), set before the model loads: the
lone worker gets the same one thread, and two 1-thread workers on a 2-core machine are the honest analogue of
two 1-core machines.

The oracle is amoeba-search's default one: SmolLM2-135M with the committed strategy and the shipped adapter,
held-out wiki perplexity on 8 blocks of 256 tokens, in this machine's auto dtype; no evaluation cache file,
so the storage is the only thing the workers share.

Counted per phase: real evaluations per worker (calls of the oracle's ``evaluate_one``), duplicates (evaluations
of a shape beyond its first, over all workers: must be 0), lost (sample shapes with no completed evaluation in
the storage, or missing from a worker's answer: must be 0), racing enqueues that ``SharedEvaluations`` closed
without evaluating (PRUNED trials, harmless), and whether the values equal the lone worker's.

Each phase is written to the result file (atomically) as it finishes; a rerun with the same settings on the
same CPU skips the phases already measured (``--redo`` measures again). Phases alternate one, shared, one, ...
with ``--repeats``; the summary takes medians.

    python benchmarks/search_workers.py                     # -> results/search-workers.json (~2-6 min, 2 cores)
    python benchmarks/search_workers.py --storage postgres  # -> results/search-workers-postgres.json
    python benchmarks/search_workers.py --smoke --out /tmp/search-workers-smoke.json  # tiny random model, < 1 min
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
MODEL = "smollm2-135m"
TARGET_RATIO = 0.6
TIMED = ("oracle(sample) through SharedEvaluations (what run_job sets up and fit_or_load_predictor calls), from "
         "the barrier that every worker passes once its model is loaded and warmed up and the storage and the "
         "evaluations study are open, to the last worker holding every value of the sample")


def _relative(value):
    """A path inside the checkout as relative to it; anything else unchanged."""
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    path = Path(value).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else value


def _now() -> float:
    """A clock every process on this machine shares (Linux: CLOCK_MONOTONIC is system-wide)."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# -- one worker (a spawned process) --------------------------------------------------------------------------

def _real_oracle(config: dict):
    """amoeba-search's default oracle: the default model, strategy and adapter, held-out perplexity."""
    from amoeba_search.cli._common import quiet_libraries
    from amoeba_search.data import token_blocks
    from amoeba_search.evaluation.perplexity import perplexity
    from amoeba_search.search.oracle import perplexity_oracle
    from amoeba_search.session import open_session

    quiet_libraries()
    session = open_session(MODEL, device=config["device"], dtype=config["dtype"])
    loaded = session.loaded
    blocks = token_blocks(config["data"], loaded.tokenizer, split="eval", seq_len=config["seq_len"],
                          max_blocks=config["blocks"])
    data_settings = {"data": config["data"], "split": "eval", "seq_len": config["seq_len"], "blocks": config["blocks"]}
    oracle = perplexity_oracle(loaded, blocks, data_settings=data_settings)
    space = loaded.space()

    def warm_up() -> None:
        loaded.activate(space.largest())
        perplexity(loaded.supernet, blocks[:1], batch_size=1)

    artefacts = {k: _relative(v) for k, v in session.artefacts.to_dict().items()}  # no checkout path in results
    about = {"model": MODEL, "compute": session.compute.to_dict(), "artefacts": artefacts,
             "space_size": len(space), "tokens_per_evaluation": int(blocks.numel())}
    return oracle, space, warm_up, about


def _smoke_oracle(config: dict):
    """A tiny random LLaMA with a strategy (tests/finetune/helpers.py) on random tokens: the mechanics only."""
    import torch

    from amoeba_search.evaluation.perplexity import perplexity
    from amoeba_search.search.oracle import perplexity_oracle
    from tests.finetune.helpers import tiny_loaded, tiny_space

    loaded = tiny_loaded()
    space = tiny_space(loaded)
    blocks = torch.randint(3, 259, (config["blocks"], config["seq_len"]), generator=torch.Generator().manual_seed(0))
    data_settings = {"data": "random tokens (smoke)", "seq_len": config["seq_len"], "blocks": config["blocks"]}
    oracle = perplexity_oracle(loaded, blocks, data_settings=data_settings)

    def warm_up() -> None:
        loaded.activate(space.largest())
        perplexity(loaded.supernet, blocks[:1], batch_size=1)

    about = {"model": "tiny random llama (smoke)", "compute": {"device": "cpu", "dtype": "fp32"},
             "space_size": len(space), "tokens_per_evaluation": int(blocks.numel())}
    return oracle, space, warm_up, about


def _worker(config: dict, storage: str, out: str, barrier) -> None:
    threads = config["threads"]
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)  # before torch is imported in this process
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import optuna
    import torch

    torch.set_num_threads(threads)  # before the model loads
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (nothing ran in parallel yet in a fresh spawned process, but be safe)
        pass
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from amoeba_search.search.oracle import design_sample
    from amoeba_search.search.storage import SharedEvaluations, evaluations_study_name, open_storage

    loading = _now()
    oracle, space, warm_up, about = (_smoke_oracle if config["smoke"] else _real_oracle)(config)
    load_s = _now() - loading
    sample = design_sample(space, config["sample"], seed=0)
    evaluated: list[dict] = []
    inner = oracle.evaluate_one

    def counted(shape):  # one real evaluation (a forward pass over the blocks), counted here
        start = _now()
        result = inner(shape)
        evaluated.append({"shape": str(shape), "start": start, "seconds": round(_now() - start, 4)})
        return result

    oracle.evaluate_one = counted
    warm_up()
    store = open_storage(storage)
    study = evaluations_study_name(oracle.settings)
    # as run_job does, given a storage: shapes not known here are claimed, evaluated and shared through it
    oracle.shared = SharedEvaluations(store, study, attrs={"settings": json.dumps(oracle.settings, sort_keys=True,
                                                                                  default=str)})
    barrier.wait(config["barrier_timeout_s"])
    start = _now()
    values = oracle(sample)
    end = _now()
    record = {"pid": os.getpid(), "start": start, "end": end, "wall_s": end - start, "load_s": round(load_s, 2),
              "evaluations": oracle.evaluations, "evaluated": evaluated, "study": study,
              "sample": [str(s) for s in sample], "values": {str(s): float(v) for s, v in zip(sample, values)},
              "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
              "torch": torch.__version__, **about}
    Path(out, f"worker-{os.getpid()}.json").write_text(json.dumps(record))


# -- the parent: phases, storages, counting ------------------------------------------------------------------

class Storages:
    """A fresh storage per phase: a journal file in ``work``, or a new database on one PostgreSQL server."""

    def __init__(self, kind: str, work: Path):
        self.kind, self.work, self.server = kind, work, None

    def __enter__(self) -> "Storages":
        if self.kind == "postgres":
            from tests.postgres_server import PostgresServer

            self.server = PostgresServer().start()  # PostgresUnavailable / PostgresStartError say why not
        return self

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.stop()

    def fresh(self, tag: str) -> str:
        from amoeba_search.search.storage import open_storage

        if self.server is None:
            return str(self.work / tag / "study.journal")
        url = self.server.create_database(tag.replace("-", "_"))
        open_storage(url)  # its tables, made once before the workers start (as a first amoeba-search run does)
        return url

    def describe(self) -> dict:
        if self.server is None:
            return {"kind": "journal", "what": "optuna JournalStorage over a JournalFileBackend, a fresh file per phase"}
        return {"kind": "postgres", "what": "optuna RDBStorage on a local PostgreSQL server (127.0.0.1, fsync off), "
                                            "a fresh database per phase", "server": self.server.version()}


def run_phase(phase: str, workers: int, storages: Storages, config: dict, tag: str) -> dict:
    storage = storages.fresh(tag)
    out = storages.work / tag
    out.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_worker, args=(config, storage, str(out), barrier), name=f"{tag}-w{i}")
             for i in range(workers)]
    load_before = os.getloadavg()[0]
    for p in procs:
        p.start()
    deadline = time.monotonic() + config["phase_timeout_s"]
    try:
        for p in procs:
            p.join(max(1.0, deadline - time.monotonic()))
            if p.exitcode != 0:
                raise RuntimeError(f"worker {p.name} (pid {p.pid}) ended with exit code {p.exitcode} "
                                   "(None: still running at the phase timeout); its traceback is above")
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(10)
    records = [json.loads(f.read_text()) for f in sorted(out.glob("worker-*.json"))]
    return {"phase": phase, "workers": workers, **_count(records, storage), "loadavg_1m_before": load_before,
            "loadavg_1m_after": os.getloadavg()[0], "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _count(records: list[dict], storage: str) -> dict:
    import optuna
    from optuna.trial import TrialState

    from amoeba_search.search.storage import open_storage

    sample = records[0]["sample"]
    calls = [e["shape"] for r in records for e in r["evaluated"]]
    trials = optuna.load_study(study_name=records[0]["study"], storage=open_storage(storage)).get_trials(deepcopy=False)
    complete: dict[str, int] = {}
    for t in trials:
        if t.state == TrialState.COMPLETE:
            complete[t.user_attrs.get("shape")] = complete.get(t.user_attrs.get("shape"), 0) + 1
    lost = {s for s in sample if s not in complete}
    lost |= {s for r in records for s in sample if s not in r["values"]}
    first = records[0]["values"]
    start, end = min(r["start"] for r in records), max(r["end"] for r in records)
    return {
        "wall_s": round(end - start, 3),
        "worker_wall_s": [round(r["wall_s"], 3) for r in records],
        "barrier_skew_s": round(max(r["start"] for r in records) - start, 4),
        "sample_size": len(sample),
        "evaluations_per_worker": [len(r["evaluated"]) for r in records],
        "evaluation_seconds_per_worker": [round(sum(e["seconds"] for e in r["evaluated"]), 3) for r in records],
        "oracle_evaluations_per_worker": [r["evaluations"] for r in records],
        "duplicates": len(calls) - len(set(calls)),
        "completed_twice_in_storage": sum(n - 1 for n in complete.values()),
        "lost": len(lost), "lost_shapes": sorted(lost),
        "racing_enqueues_pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed_trials": sum(t.state == TrialState.FAIL for t in trials),
        "workers_agree": all(r["values"] == first for r in records),
        "values": first,
        "load_s_per_worker": [r["load_s"] for r in records],
        "torch_threads_per_worker": [r["torch_threads"] for r in records],
        "torch_interop_threads_per_worker": [r["torch_interop_threads"] for r in records],
        "evaluations_order": [[(e["shape"], round(e["start"] - start, 3)) for e in r["evaluated"]] for r in records],
        "about": {k: records[0][k] for k in ("model", "compute", "artefacts", "space_size", "tokens_per_evaluation",
                                              "torch", "study") if k in records[0]},
    }


def summarize(runs: list[dict]) -> dict | None:
    one = [r for r in runs if r["phase"] == "one"]
    shared = [r for r in runs if r["phase"] == "shared"]
    if not one or not shared:
        return None
    one_wall = statistics.median(r["wall_s"] for r in one)
    shared_wall = statistics.median(r["wall_s"] for r in shared)
    ratio = shared_wall / one_wall
    reference = one[0]["values"]
    differences = [abs(v / reference[s] - 1) for r in shared for s, v in r["values"].items() if s in reference]
    duplicates = sum(r["duplicates"] for r in runs)
    lost = sum(r["lost"] for r in runs)
    return {
        "one_worker_wall_s": one_wall, "shared_wall_s": shared_wall, "workers": shared[0]["workers"],
        "ratio_shared_to_one": round(ratio, 4), "target_ratio_at_most": TARGET_RATIO,
        "ratio_met": ratio <= TARGET_RATIO,
        "evaluations_per_worker": [r["evaluations_per_worker"] for r in shared],
        "duplicates": duplicates, "lost": lost,
        "shared_values_max_rel_diff_vs_one_worker": max(differences) if differences else None,
        "repeats": {"one": len(one), "shared": len(shared)},
        "all_met": ratio <= TARGET_RATIO and duplicates == 0 and lost == 0,
    }


def machine() -> dict:
    from amoeba_search.profiling.machine import detect_machine

    info = detect_machine()
    return {"summary": info.summary(), "cpu_model": info.cpu_model, "cpu_cores": info.cpu_cores,
            "cpu_count": os.cpu_count(), "isa": list(info.isa), "loadavg_1m": os.getloadavg()[0]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--storage", choices=["journal", "postgres"], default="journal",
                   help="storage kind (postgres: starts a local server; needs initdb and psycopg2)")
    p.add_argument("--sample", type=int, default=None, help="shapes of the predictor's design sample [16; smoke 4]")
    p.add_argument("--workers", type=int, default=2, help="workers of the shared phase")
    p.add_argument("--threads", type=int, default=1, help="torch threads of every worker")
    p.add_argument("--repeats", type=int, default=1, help="pairs of phases (one, shared) to measure")
    p.add_argument("--data", default="wiki")
    p.add_argument("--seq-len", type=int, default=None, help="[256; smoke 32]")
    p.add_argument("--blocks", type=int, default=None, help="eval blocks per evaluation [8; smoke 4]")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--smoke", action="store_true", help="a tiny random model built in code (needs --out)")
    p.add_argument("--out", type=Path, default=None,
                   help="result file [results/search-workers.json, or search-workers-postgres.json]")
    p.add_argument("--redo", action="store_true", help="measure phases that are already in the result file")
    args = p.parse_args(argv)
    defaults = {"sample": (16, 4), "seq_len": (256, 32), "blocks": (8, 4)}
    for key, (real, smoke) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else real)
    for key in ("sample", "workers", "threads", "repeats", "seq_len", "blocks"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.workers < 2:
        p.error("--workers must be at least 2: the shared phase compares several workers with one")
    if args.smoke:
        args.data = "random tokens"  # what the smoke oracle reads, whatever --data says
        if args.out is None:
            p.error("--smoke needs --out PATH (outside benchmarks/results)")
        if RESULTS.resolve() in args.out.resolve().parents:
            p.error("--smoke must not write into benchmarks/results; pass another --out")
    elif args.out is None:
        args.out = RESULTS / ("search-workers.json" if args.storage == "journal" else "search-workers-postgres.json")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from amoeba_search.paths import atomic_write_text

    settings = {k: v for k, v in vars(args).items() if k not in ("out", "redo", "repeats")}
    here = machine()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if (results.get("settings") != settings or results.get("machine", {}).get("cpu_model") != here["cpu_model"]
            or args.redo):
        results = {}
    runs = results.get("runs", [])
    config = {**settings, "barrier_timeout_s": 120 if args.smoke else 900,
              "phase_timeout_s": 300 if args.smoke else 1800}
    plan = [(phase, rep) for rep in range(args.repeats) for phase in ("one", "shared")]
    todo = [(phase, rep) for phase, rep in plan if not any(r["phase"] == phase and r["repeat"] == rep for r in runs)]
    if len(todo) < len(plan):
        print(f"{len(plan) - len(todo)} phase(s) already measured on this CPU with these settings, kept "
              "(--redo to measure again)")
    with tempfile.TemporaryDirectory(prefix="amoeba-search-workers-") as tmp, \
            Storages(args.storage if todo else "journal", Path(tmp)) as storages:
        for phase, rep in todo:
            workers = 1 if phase == "one" else args.workers
            run = {"repeat": rep, **run_phase(phase, workers, storages, config, f"{phase}-{rep}")}
            runs.append(run)
            print(f"{phase} #{rep}: {workers} worker(s), {run['sample_size']} shapes in {run['wall_s']:.1f} s; "
                  f"evaluations per worker {run['evaluations_per_worker']}, duplicates {run['duplicates']}, "
                  f"lost {run['lost']}", flush=True)
            results = {
                "benchmark": "search_workers",
                "claim": "N search workers on one storage split the predictor's sample with no duplicates and none "
                         "lost; wall time for the shared sample <= 0.6x one worker's",
                "smoke": args.smoke, "settings": settings, "storage": storages.describe(), "timed": TIMED,
                "fairness": f"every worker is a spawned process with {args.threads} torch thread(s) "
                            f"(torch.set_num_threads before the model loads; OMP/MKL threads too); on a machine with "
                            f"{here['cpu_cores']} cores, {args.workers} such workers are the analogue of "
                            f"{args.workers} one-core machines",
                "evaluation_cache": "none: the storage is the only thing the workers share",
                "machine": here, "runs": runs, "summary": summarize(runs),
                "complete": len(runs) == len(plan),
                "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            if args.smoke:
                results["note"] = "smoke: a tiny random model; the timings say nothing about the claim"
            atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
    print(json.dumps(results.get("summary"), indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
