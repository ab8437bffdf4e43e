"""lm-evaluation-harness on any subnet: the model object goes straight into ``HFLM``, nothing is exported.

Three kinds of task names mix freely in one call:

* local multiple-choice tasks (``amoeba_<task>``, ``amoeba_<task>_calib``, or a path to a ``.jsonl`` task
  file; see ``local_tasks``): read offline through lm-eval's ``json`` builder, with the hub switched off;
* ``ppl:<source>``: perplexity on held-out token blocks of a text source (``wiki``, ``austen``, a file...);
* any task lm-eval knows (``hellaswag``, ``arc_easy``...): these download their data set, so they work only
  where the Hugging Face Hub can be reached; elsewhere they fail with one clear message.

>>> record = evaluate_tasks(loaded, None, ["amoeba_goal_inference", "ppl:wiki"], shape=SubnetShape(24, 0.75, 1))
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from amoeba_search.data.multiple_choice import read_task_file
from amoeba_search.errors import AmoebaError, InputError, UnknownNameError
from amoeba_search.evaluation import local_tasks
from amoeba_search.shapes import ModelDims, SubnetShape

SCHEMA_VERSION = 1
PPL_PREFIX = "ppl:"
DEFAULT_PPL_SOURCES = ("wiki", "austen", "lee")

logger = logging.getLogger(__name__)


class TaskUnavailable(AmoebaError):
    """A known lm-eval task whose data set cannot be had here (no hub access)."""


@dataclass(frozen=True)
class TaskRequest:
    """One requested task, resolved: ``kind`` is ``local``, ``ppl`` or ``lm_eval``."""

    name: str
    kind: str
    path: Path | None = None    # local: the JSONL file
    source: str | None = None   # ppl: the text source


# -- resolving names ---------------------------------------------------------------------------------

def parse_tasks(tasks: str | Sequence[str]) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` to a list of distinct names, in order."""
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names = [n.strip() for n in names if n and n.strip()]
    if not names:
        raise InputError("no tasks given; name at least one, e.g. amoeba_goal_inference or ppl:wiki")
    seen = set()
    return [n for n in names if not (n in seen or seen.add(n))]


def resolve_tasks(tasks: str | Sequence[str], *, task_dir: str | Path | None = None,
                  registry=None) -> list[TaskRequest]:
    """Sort names into local / ppl / lm-eval; an unknown name raises ``UnknownNameError`` with close matches.

    ``registry`` is a ``TaskManager`` (built on first need: indexing lm-eval's own tasks takes seconds).
    """
    out = []
    for name in parse_tasks(tasks):
        if name.startswith(PPL_PREFIX):
            source = name[len(PPL_PREFIX):]
            if not source:
                raise InputError(f"{name!r} names no text source; e.g. ppl:wiki, ppl:austen or ppl:my_text.txt")
            out.append(TaskRequest(name, "ppl", source=source))
            continue
        path = local_tasks.task_file(name, task_dir)
        if path is not None:
            read_task_file(path)  # a malformed row fails here, named, not deep inside lm-eval
            out.append(TaskRequest(local_tasks.task_name(name), "local", path=path))
            continue
        if name.startswith(local_tasks.TASK_PREFIX):
            local_tasks.task_items(name, directory=task_dir)  # raises: not prepared, or did you mean
        registry = registry or _task_manager(include_defaults=True)
        if name not in registry.all_tasks:
            known = local_tasks.local_task_names(task_dir) + [PPL_PREFIX + s for s in DEFAULT_PPL_SOURCES]
            raise UnknownNameError(f"unknown task {name!r}; " + _close_matches(name, known, registry.all_tasks))
        out.append(TaskRequest(name, "lm_eval"))
    return out


def _close_matches(name: str, local: list[str], registry: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, local + list(registry), n=6, cutoff=0.6)
    if close:
        return "did you mean " + ", ".join(close) + "?"
    listed = ", ".join(local) if local else "none prepared (run `amoeba-eval --prepare-tasks`)"
    return f"local tasks: {listed}; see `amoeba-eval --list-tasks`"


def _task_manager(*, include_defaults: bool):
    _require_lm_eval()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=include_defaults)


# -- the model ---------------------------------------------------------------------------------------

def _unwrap(model, tokenizer, shape: SubnetShape | str | None, layers: Sequence[int] | None):
    """(HF model, tokenizer, model facts for the record) for a LoadedSupernet, a Supernet or a plain model."""
    from amoeba_search.models.session import LoadedSupernet
    from amoeba_search.models.supernet import Supernet

    shape = SubnetShape.parse(shape) if isinstance(shape, str) else shape
    facts: dict[str, Any] = {}
    if isinstance(model, LoadedSupernet):
        tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        facts["model"] = model.spec
        if model.strategy_path:
            facts["strategy"] = model.strategy_path
        if shape is not None:
            model.supernet.set_active(shape, layers if layers is not None else model.layers_for(shape))
        model = model.supernet
    if isinstance(model, Supernet):
        if shape is not None and (shape != model.active_shape or
                                  (layers is not None and tuple(sorted(layers)) != model.active_layers)):
            model.set_active(shape, layers)
        dims = model.dims
        shape, layers = model.active_shape, list(model.active_layers)
        facts.update({"view": "supernet", "ffn_channels": shape.ffn_channels(dims),
                      "num_heads": shape.num_heads(dims)})
        model = model.model
    else:
        exported = _exported_provenance(model)
        shape = shape if shape is not None else (SubnetShape.parse(exported["shape"]) if "shape" in exported else None)
        layers = layers if layers is not None else exported.get("kept_layers")
        dims = ModelDims.from_config(model.config)
        facts.update({"view": "model", "ffn_channels": exported.get("ffn_channels", dims.ffn_size),
                      "num_heads": exported.get("num_heads", dims.num_heads)})
        facts.update({k: v for k, v in exported.items() if k in ("exported_from", "export_dir")})
    if tokenizer is None:
        raise InputError("a tokenizer is needed with a plain model (pass the one it was loaded with)")
    facts.setdefault("model", getattr(model.config, "_name_or_path", "") or type(model).__name__)
    facts["shape"] = None if shape is None else str(shape)
    facts["kept_layers"] = None if layers is None else [int(i) for i in layers]
    facts["num_layers"] = int(model.config.num_hidden_layers)
    return model, tokenizer, facts


def _exported_provenance(model) -> dict:
    """Shape and kept layers an ``amoeba-export`` checkpoint was cut at (from its provenance file)."""
    from amoeba_search.models.export import PROVENANCE_FILE

    where = getattr(model.config, "_name_or_path", "") or ""
    path = Path(where) / PROVENANCE_FILE if where else None
    if path is None or not path.is_file():
        return {}
    record = json.loads(path.read_text())
    out = {"exported_from": record.get("source_model"), "export_dir": str(Path(where).resolve())}
    for key in ("shape", "kept_layers", "ffn_channels", "num_heads"):
        if key in record:
            out[key] = record[key]
    return {k: v for k, v in out.items() if v is not None}


# -- offline and quiet -------------------------------------------------------------------------------

@contextlib.contextmanager
def hub_offline(enabled: bool = True):
    """Switch the Hugging Face Hub off for ``datasets`` and ``huggingface_hub``; everything is restored after.

    Both libraries read their offline flags into module constants at import, so they are imported first and
    the constants set (and reset) here, along with the environment (for anything that reads it later).
    """
    if not enabled:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    flags = [(datasets.config, "HF_DATASETS_OFFLINE"), (datasets.config, "HF_HUB_OFFLINE"),
             (huggingface_hub.constants, "HF_HUB_OFFLINE")]
    saved_flags = [(mod, attr, getattr(mod, attr)) for mod, attr in flags if hasattr(mod, attr)]
    for mod, attr, _ in saved_flags:
        setattr(mod, attr, True)
    try:
        yield
    finally:
        for mod, attr, value in saved_flags:
            setattr(mod, attr, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _quiet_lm_eval():
    """lm-eval logs every step at INFO/WARNING (and the hub client each retry); the library prints nothing."""
    loggers = [logging.getLogger(name) for name in ("lm-eval", "lm_eval", "huggingface_hub", "datasets")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# -- evaluation --------------------------------------------------------------------------------------

def evaluate_tasks(model, tokenizer=None, tasks: str | Sequence[str] = (), *, limit: int | None = None,
                   shape: SubnetShape | str | None = None, layers: Sequence[int] | None = None,
                   batch_size: int = 8, task_dir: str | Path | None = None, ppl_seq_len: int = 512,
                   ppl_blocks: int = 32, bootstrap_iters: int = 1000) -> dict:
    """Evaluate one subnet on ``tasks``; return a JSON-ready record (see ``SCHEMA_VERSION``).

    ``model`` is a ``LoadedSupernet`` (``open_supernet``), a ``Supernet`` or a plain HF causal LM (an
    exported checkpoint, for one). With a supernet, ``shape`` (and ``layers``, else the strategy's) picks
    the subnet first; with a plain model, ``shape``/``layers`` only label the record (an ``amoeba-export``
    directory labels itself). ``limit`` caps the items per lm-eval task (the first N of each file);
    perplexity tasks score ``ppl_blocks`` blocks of ``ppl_seq_len`` tokens of the source's eval split.
    """
    if limit is not None and limit < 1:
        raise InputError(f"limit must be a positive number of items, got {limit}")
    if batch_size < 1 or ppl_blocks < 1 or ppl_seq_len < 2:
        raise InputError("batch_size, ppl_blocks must be >= 1 and ppl_seq_len >= 2")
    requests = resolve_tasks(tasks, task_dir=task_dir)
    hf_model, tokenizer, facts = _unwrap(model, tokenizer, shape, layers)
    logger.info("evaluating %s (shape %s) on %d tasks: %s", facts["model"], facts["shape"], len(requests),
                ", ".join(r.name for r in requests))
    started = time.perf_counter()
    results: dict[str, dict] = {}
    harness = [r for r in requests if r.kind != "ppl"]
    if harness:
        results.update(_run_harness(hf_model, tokenizer, harness, limit=limit, batch_size=batch_size,
                                    bootstrap_iters=bootstrap_iters))
        logger.info("lm-eval done: %d tasks, %.1f s", len(harness), time.perf_counter() - started)
    for request in requests:
        if request.kind == "ppl":
            task_start = time.perf_counter()
            results[request.name] = _run_perplexity(hf_model, tokenizer, request.source, seq_len=ppl_seq_len,
                                                    blocks=ppl_blocks, batch_size=batch_size)
            logger.info("%s: perplexity %.4g over %d tokens, %.1f s", request.name,
                        results[request.name]["metrics"]["ppl"], results[request.name]["metrics"]["tokens"],
                        time.perf_counter() - task_start)
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "eval",
        **facts,
        "limit": limit,
        "batch_size": batch_size,
        "tasks": _in_request_order(requests, results),
        "versions": _versions(),
        "wall_s": round(time.perf_counter() - started, 3),
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _require_lm_eval() -> None:
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        from amoeba_search.errors import MissingDependency

        raise MissingDependency("task evaluation needs lm-evaluation-harness: pip install lm-eval")


def _in_request_order(requests: list[TaskRequest], results: dict) -> dict:
    """Requested tasks first, in order; then the subtasks a requested lm-eval group expanded to."""
    ordered = {r.name: results[r.name] for r in requests}
    ordered.update({k: v for k, v in results.items() if k not in ordered})
    return ordered


def _run_harness(model, tokenizer, requests: list[TaskRequest], *, limit, batch_size, bootstrap_iters) -> dict:
    _require_lm_eval()
    only_local = all(r.kind == "local" for r in requests)
    with hub_offline(only_local), _quiet_lm_eval():
        from lm_eval.evaluator import evaluate
        from lm_eval.evaluator_utils import get_sample_size
        from lm_eval.models.huggingface import HFLM

        manager = _task_manager(include_defaults=not only_local)
        loaded = {"tasks": {}, "groups": {}, "group_map": {}}
        for request in requests:
            spec = (local_tasks.lm_eval_config(request.name, request.path) if request.kind == "local"
                    else request.name)
            try:
                part = manager.load([spec])
            except (ConnectionError, OSError) as err:
                if request.kind == "local":
                    raise
                raise TaskUnavailable(
                    f"lm-eval task {request.name!r} could not get its data set ({type(err).__name__}: "
                    f"{_first_line(err)}); standard tasks download from the Hugging Face Hub, which could not be "
                    "reached. Use a local task instead (see `amoeba-eval --list-tasks`)") from None
            for key in loaded:
                loaded[key].update(part.get(key, {}))
        for task in loaded["tasks"].values():
            if task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=1234)
        was_training = model.training  # HFLM puts the model in eval mode; a trainer gets its mode back
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        try:
            out = evaluate(lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=bootstrap_iters, log_samples=False)
        finally:
            model.train(was_training)
        sample_sizes = {name: get_sample_size(task, limit) for name, task in loaded["tasks"].items()}

    records = {}
    for request in requests:
        names = [request.name] if request.name in out["results"] else \
            sorted(out.get("group_subtasks", {}).get(request.name, [])) or [request.name]
        for name in names:
            records[name] = _harness_record(name, request, out, loaded["tasks"].get(name), sample_sizes.get(name))
        if len(names) > 1 or names[0] != request.name:
            records[request.name] = {"kind": "lm_eval_group", "subtasks": names,
                                     "metrics": _clean_metrics(out["results"].get(request.name, {}))}
    return records


def _harness_record(name: str, request: TaskRequest, out: dict, task, n: int | None) -> dict:
    config = out.get("configs", {}).get(name, {})
    record = {
        "kind": request.kind if name == request.name else "lm_eval",
        "metrics": _clean_metrics(out["results"].get(name, {})),
        "n": out.get("n-samples", {}).get(name, {}).get("effective", n),
        "n_total": out.get("n-samples", {}).get(name, {}).get("original"),
        "random_baseline": _random_baseline(task, n),
        "version": out.get("versions", {}).get(name),
        "n_shot": out.get("n-shot", {}).get(name),
        "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest(),
    }
    if request.kind == "local":
        record["data_file"] = str(request.path)
        record["data_sha256"] = local_tasks.file_sha256(request.path)
    return record


def _clean_metrics(metrics: dict) -> dict:
    """``{"acc,none": 0.5, "acc_stderr,none": ...}`` to ``{"acc": 0.5, "acc_stderr": ...}``."""
    out = {}
    for key, value in metrics.items():
        if key in ("alias", "sample_len") or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        metric, _, filt = key.partition(",")
        out[metric if filt in ("", "none") else f"{metric},{filt}"] = float(value)
    return out


def _random_baseline(task, n: int | None) -> dict | None:
    """Expected acc / acc_norm of a uniform random choice over the items evaluated (None if not multiple choice)."""
    if task is None or getattr(task, "OUTPUT_TYPE", None) != "multiple_choice":
        return None
    docs = list(task.eval_docs)
    docs = docs[:n] if n is not None else docs
    if not docs:
        return None
    chance = sum(1.0 / len(task.doc_to_choice(doc)) for doc in docs) / len(docs)
    return {"acc": chance, "acc_norm": chance}


def _run_perplexity(model, tokenizer, source: str, *, seq_len: int, blocks: int, batch_size: int) -> dict:
    from amoeba_search.data import token_blocks
    from amoeba_search.evaluation.perplexity import perplexity

    data = token_blocks(source, tokenizer, split="eval", seq_len=seq_len, max_blocks=blocks)
    result = perplexity(model, data, batch_size=batch_size)
    return {"kind": "ppl", "metrics": result.to_dict(), "source": source, "split": "eval",
            "seq_len": seq_len, "blocks": int(data.shape[0]), "random_baseline": None}


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:160] if text else ""


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import torch
    import transformers

    from amoeba_search import __version__

    try:
        lm_eval_version = version("lm_eval")
    except PackageNotFoundError:
        lm_eval_version = None
    return {"amoeba_search": __version__, "lm_eval": lm_eval_version, "transformers": transformers.__version__,
            "torch": torch.__version__}
