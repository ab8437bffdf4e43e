"""Offline multiple-choice tasks from BIG-bench, which ships its task files inside its PyPI sdist.

``prepare_tasks()`` gets the ``bigbench`` sdist with pip (or takes one you already have), pulls out only the
few ``bigbench/benchmark_tasks/<task>/task.json`` files listed in ``TASKS``, turns each into two local task
files (``amoeba_<task>_calib.jsonl`` and ``amoeba_<task>.jsonl``, see ``local_tasks``) plus lm-eval YAML, and
forgets the rest of the 360 MB archive.

Why the detour through pip's temporary tree: pip (>= 25) refuses to *finish* downloading bigbench 1.0.0,
because the sdist declares a direct-URL dependency (``bleurt @ file://...``). It has downloaded and unpacked
the sdist by then, so we run it with ``--no-clean`` inside a temporary directory of our own, read the task
files from what it unpacked, and delete everything. Older pips simply succeed and leave the tarball, which
is read directly.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from amoeba_search.data.multiple_choice import MCItem, check_row, write_task_file
from amoeba_search.errors import MissingDependency, UnknownNameError
from amoeba_search.evaluation.local_tasks import (CALIB_SUFFIX, TASK_PREFIX, file_sha256, random_baseline, tasks_dir,
                                                  write_lm_eval_yaml)
from amoeba_search.paths import atomic_write_text

logger = logging.getLogger(__name__)

BIGBENCH_VERSION = "1.0.0"
TASKS_ROOT = "bigbench/benchmark_tasks"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1       # bump when conversion or splitting changes: prepared files are then rebuilt
CALIB_FRACTION = 1 / 3   # share of each task's items (grouped by input text) kept for calibration
MAX_ITEMS = 3000         # per task, before splitting; the big tasks are sampled deterministically


@dataclass(frozen=True)
class BigBenchTask:
    name: str                          # our name: amoeba_<name> and amoeba_<name>_calib
    source: str                        # folder under bigbench/benchmark_tasks
    description: str
    append_choices: bool | None = None  # list the choices in the prompt; None: as the task file says


# English multiple-choice tasks whose answers are natural continuations, so that log-likelihood scoring says
# something about a small model. SmolLM2-135M, zero-shot, on up to 60 items of each: goal_inference 0.42
# (chance 0.25), step_inference 0.52 (0.25), general_knowledge 0.44 (0.15), phrase_relatedness 0.45 (0.25),
# similarities_abstraction 0.64 (0.24). Tried and left out, at or near chance or saturated: social_iqa,
# logical_deduction, odd_one_out, english_proverbs, cause_and_effect, unit_identification (0.98).
TASKS: dict[str, BigBenchTask] = {t.name: t for t in (
    BigBenchTask("goal_inference", "goal_step_wikihow/goal_inference",
                 "wikiHow: the goal a step belongs to (4 choices, 1703 items)", append_choices=False),
    BigBenchTask("step_inference", "goal_step_wikihow/step_inference",
                 "wikiHow: a step that belongs to a goal (4 choices, 2250 items)", append_choices=False),
    BigBenchTask("general_knowledge", "general_knowledge",
                 "simple facts about animals, objects and the world (~7 choices, 70 items)", append_choices=False),
    BigBenchTask("phrase_relatedness", "phrase_relatedness",
                 "the phrase most related in meaning to a given one (4 choices, 100 items)", append_choices=False),
    BigBenchTask("similarities_abstraction", "similarities_abstraction",
                 "what two things have in common (~4 choices, 76 items)", append_choices=False),
)}


def task_names(*, calib: bool = False) -> list[str]:
    """The lm-eval names of the prepared BIG-bench tasks (evaluation parts, or calibration parts)."""
    return [TASK_PREFIX + name + (CALIB_SUFFIX if calib else "") for name in TASKS]


# -- conversion --------------------------------------------------------------------------------------

def format_context(task: dict, example: dict, *, append_choices: bool | None = None) -> str:
    """The prompt BIG-bench itself builds for ``example`` (its defaults: ``Q: ... A:``), stripped."""
    if append_choices is None:
        append_choices = bool(task.get("append_choices_to_input", True))
    text = task.get("task_prefix", "") + task.get("example_input_prefix", "\nQ: ") + example["input"].strip()
    if append_choices:
        prefix = task.get("choice_prefix", "\n  choice: ")
        text += "".join(prefix + choice for choice in example["target_scores"])
    text += task.get("example_output_prefix", "\nA: ")
    return text.strip()


def convert_task(task: dict, spec: BigBenchTask) -> list[tuple[str, MCItem]]:
    """(group key, item) for every usable example: one best choice, at least two distinct choices."""
    out = []
    for i, example in enumerate(task.get("examples", [])):
        scores = example.get("target_scores")
        if not isinstance(scores, dict) or "input" not in example:
            continue
        choices = [c.strip() for c in scores]
        best = max(scores.values())
        if len(set(choices)) != len(choices) or list(scores.values()).count(best) != 1 or len(choices) < 2:
            continue
        answer = list(scores.values()).index(best)
        context = format_context(task, example, append_choices=spec.append_choices)
        item = check_row({"context": context, "choices": choices, "answer": answer},
                         f"{spec.source}/task.json example {i}")
        # Items sharing an input (several questions about one paragraph) stay in the same split.
        out.append((example["input"].strip() or "\x00".join(sorted(choices)), item))
    return out


def split_items(keyed: list[tuple[str, MCItem]], name: str, *, calib_fraction: float = CALIB_FRACTION,
                max_items: int | None = MAX_ITEMS) -> dict[str, list[MCItem]]:
    """Deterministic calibration / evaluation split by a hash of each item's group, in hash order.

    Hash order is a fixed shuffle, so ``--limit N`` takes a fair sample, not the head of a sorted file.
    """
    def digest(text: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{name}\x00{text}".encode()).digest()[:8], "big")

    ordered = sorted(keyed, key=lambda pair: (digest(pair[0] + "\x01" + json.dumps(pair[1])), pair[0]))
    if max_items is not None:
        ordered = ordered[:max_items]
    parts: dict[str, list[MCItem]] = {"calib": [], "eval": []}
    for key, item in ordered:
        parts["calib" if digest(key) < calib_fraction * 2 ** 64 else "eval"].append(item)
    return parts


# -- getting the task files --------------------------------------------------------------------------

@contextlib.contextmanager
def bigbench_files(sdist: str | Path | None = None) -> Iterator[Callable[[str], bytes]]:
    """Yield ``read(relative_path) -> bytes`` over the bigbench sources.

    ``sdist`` is a ``bigbench-*.tar.gz`` or an unpacked tree; without it, pip fetches the sdist (once per
    call; nothing is kept).
    """
    if sdist is not None:
        with _open_source(Path(sdist).expanduser()) as read:
            yield read
        return
    with tempfile.TemporaryDirectory(prefix="amoeba-bigbench-") as tmp:
        tmp = Path(tmp)
        (tmp / "tmp").mkdir()
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-clean",
                   "--disable-pip-version-check", f"bigbench=={BIGBENCH_VERSION}", "-d", str(tmp / "dl")]
        proc = subprocess.run(command, env={**os.environ, "TMPDIR": str(tmp / "tmp")},
                              capture_output=True, text=True)
        found = sorted((tmp / "dl").glob("bigbench-*.tar.gz")) if (tmp / "dl").is_dir() else []
        found = found or sorted(p.parent.parent for p in (tmp / "tmp").glob(f"pip-*/*/{TASKS_ROOT}"))
        if not found:
            tail = " | ".join(line for line in (proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise MissingDependency(f"could not get the bigbench {BIGBENCH_VERSION} sdist with pip (exit "
                                    f"{proc.returncode}: {tail}); download it yourself and pass it with "
                                    "--bigbench-sdist FILE")
        with _open_source(found[0]) as read:
            yield read


@contextlib.contextmanager
def _open_source(path: Path) -> Iterator[Callable[[str], bytes]]:
    if path.is_dir():
        roots = [path] if (path / TASKS_ROOT).is_dir() else [p.parent.parent for p in path.glob(f"*/{TASKS_ROOT}")]
        if not roots:
            raise FileNotFoundError(f"{path} holds no {TASKS_ROOT} folder; "
                                    "give the bigbench sdist or its unpacked tree")

        def read_dir(relative: str) -> bytes:
            file = roots[0] / relative
            if not file.is_file():
                raise FileNotFoundError(f"{relative} is not in the bigbench sources at {roots[0]}")
            return file.read_bytes()

        yield read_dir
        return
    if not path.is_file():
        raise FileNotFoundError(f"bigbench sdist {path} does not exist")
    with tarfile.open(path, "r:*") as archive:
        members = {m.name.split("/", 1)[-1]: m for m in archive.getmembers() if "/benchmark_tasks/" in m.name}

        def read_tar(relative: str) -> bytes:
            if relative not in members:
                raise FileNotFoundError(f"{relative} is not in {path.name}")
            return archive.extractfile(members[relative]).read()

        yield read_tar


# -- preparing ---------------------------------------------------------------------------------------

def load_manifest(directory: str | Path | None = None) -> dict:
    path = Path(directory or tasks_dir()) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {"tasks": {}}


def _is_prepared(name: str, manifest: dict, directory: Path) -> bool:
    entry = manifest.get("tasks", {}).get(name)
    return (entry is not None and entry.get("format") == FORMAT_VERSION and entry.get("spec") == asdict(TASKS[name])
            and all((directory / f"{TASK_PREFIX}{name}{suffix}.jsonl").is_file() for suffix in ("", CALIB_SUFFIX)))


def prepare_tasks(names: list[str] | None = None, *, sdist: str | Path | None = None,
                  directory: str | Path | None = None, force: bool = False) -> dict:
    """Make the local BIG-bench tasks (default: all of ``TASKS``); return the manifest.

    Already prepared tasks are kept unless ``force``; the sdist is fetched only when some task is missing.
    """
    names = list(TASKS) if names is None else list(names)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise UnknownNameError(f"unknown BIG-bench task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    directory = Path(directory) if directory is not None else tasks_dir()
    directory.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(directory)
    todo = [n for n in names if force or not _is_prepared(n, manifest, directory)]
    if not todo:
        logger.debug("BIG-bench tasks already prepared in %s: %s", directory, ", ".join(names))
        return manifest
    logger.info("preparing %d BIG-bench tasks in %s: %s", len(todo), directory, ", ".join(todo))
    with bigbench_files(sdist) as read:
        for name in todo:
            spec = TASKS[name]
            raw = read(f"{TASKS_ROOT}/{spec.source}/task.json")
            parts = split_items(convert_task(json.loads(raw), spec), name)
            entry = {"format": FORMAT_VERSION, "spec": asdict(spec),
                     "source": f"bigbench {BIGBENCH_VERSION}: {spec.source}/task.json",
                     "source_sha256": hashlib.sha256(raw).hexdigest(), "description": spec.description,
                     "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "parts": {}}
            for part, suffix in (("eval", ""), ("calib", CALIB_SUFFIX)):
                task = f"{TASK_PREFIX}{name}{suffix}"
                path = write_task_file(directory / f"{task}.jsonl", parts[part])
                write_lm_eval_yaml(task, path, directory)
                entry["parts"][part] = {"task": task, "items": len(parts[part]), "sha256": file_sha256(path),
                                        "random_baseline": random_baseline(parts[part])}
            manifest.setdefault("tasks", {})[name] = entry
    manifest["bigbench_version"] = BIGBENCH_VERSION
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    return manifest
