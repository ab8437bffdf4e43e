"""Where a search keeps its state, so that it resumes after a crash and several workers share one search.

``open_storage`` turns what a user passes (``--storage``) into an Optuna storage:

- an Optuna URL (``postgresql://user@host/db``, ``mysql://...``, ``sqlite:///file.db``) is an ``RDBStorage``.
  PostgreSQL (or MySQL) is the one for several workers and several machines; SQLite serves one worker (Optuna
  advises against it for parallel work: its file lock serializes writers and times out under load);
- a plain file path is a ``JournalStorage`` over a ``JournalFileBackend``: an append-only log, safe for several
  processes on one machine (or a shared file system with working locks) and needing no server.

``SharedEvaluations`` shares the expensive part of a search, the real evaluations of shapes, through the
same storage, so N workers split them with no duplicates and nothing lost.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from amoeba_search.errors import InputError
from amoeba_search.shapes import SubnetShape

logger = logging.getLogger(__name__)

Evaluate = Callable[[SubnetShape], tuple[float, float, dict | None]]  # shape -> (metric, seconds, details)


def is_url(where: str) -> bool:
    return "://" in where


def open_storage(where: str | os.PathLike | BaseStorage | None) -> BaseStorage | None:
    """An Optuna storage for ``where``: a storage object as it is, an Optuna URL as an ``RDBStorage``, a file
    path as a ``JournalStorage`` file (its folder is created), None as None (in memory, per study)."""
    if where is None or isinstance(where, BaseStorage):
        return where
    where = os.fspath(where)
    if is_url(where):
        return _rdb_storage(where)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path = Path(where).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _rdb_storage(url: str, attempts: int = 3) -> BaseStorage:
    """``RDBStorage(url)``; workers that start together on an empty database all create its tables and all but
    one fail (an integrity error, or "table ... already exists" from SQLite and PostgreSQL): those try again,
    finding the tables made."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except (IntegrityError, OperationalError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def describe_storage(where: str | os.PathLike | None) -> str | None:
    """``where`` in words for result files: a URL without its password, or the journal file."""
    if where is None or isinstance(where, BaseStorage):
        return None if where is None else type(where).__name__
    where = os.fspath(where)
    if is_url(where):
        scheme, rest = where.split("://", 1)
        if "@" in rest:
            credentials, host = rest.rsplit("@", 1)
            rest = f"{credentials.split(':', 1)[0]}@{host}"
        return f"{scheme}://{rest}"
    return f"journal file {where}"


def describe_study(study: optuna.Study, metric_names: Sequence[str] | None, attrs: dict[str, Any] | None) -> None:
    """Name the study's objectives and record what it is about (model, device, flow, ...) as user attributes,
    once: every worker calls this, only values that differ are written."""
    if metric_names is not None and study.metric_names != list(metric_names):
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what the dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(metric_names))
    present = study.user_attrs
    for key, value in (attrs or {}).items():
        value = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if present.get(key, object()) != value:
            study.set_user_attr(key, value)


def evaluations_study_name(settings: dict) -> str:
    """The study that holds the real evaluations made with ``settings`` (an oracle's): evaluations do not
    depend on the budget, the method or the predictor, so every search with these settings shares them."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"amoeba-evaluations-{digest}"


class SharedEvaluations:
    """Real evaluations of shapes, claimed and shared by every worker through one Optuna study.

    Each shape is one trial of the evaluations study: enqueued (WAITING) by the first worker that needs it,
    claimed (RUNNING) by exactly one worker, completed with the metric as its value (seconds and side numbers
    as user attributes). Every worker waits until all the shapes it asked for are complete and reads all the
    values from the storage, so nothing is evaluated twice and nothing is lost when a worker stops.

    Why this primitive: the claim is ``storage.set_trial_state_values(trial_id, RUNNING)``, the compare-and-set
    with which ``Study.ask`` pops an enqueued trial. Optuna guarantees it succeeds for one caller only: an
    RDB storage updates the row it has locked (``SELECT ... FOR UPDATE``), a journal storage lets the first
    RUNNING record in the log win. Study user attributes offer no such atomic test-and-set, so they cannot
    claim. We call the primitive instead of ``ask()`` because ``ask()`` creates a fresh, unrelated trial
    whenever the queue is empty at that instant (another worker may just have emptied it).

    Enqueueing is a read then a write (``skip_if_exists`` is not atomic either), so two workers can enqueue
    the same shape at the same moment. Then the trial with the lowest id is the shape's one evaluation: a
    worker that claims another copy closes it PRUNED (user attribute ``duplicate_of``) without evaluating.

    A claim held by a process that is gone (same host, pid no longer alive), or older than ``stale_after_s``
    when given (for workers on other machines), is failed and the shape enqueued again.
    """

    def __init__(self, storage: str | os.PathLike | BaseStorage, study_name: str, *, poll_s: float = 0.1,
                 stale_after_s: float | None = None, attrs: dict[str, Any] | None = None):
        if poll_s <= 0:
            raise InputError(f"poll_s must be positive, got {poll_s}")
        self.storage = open_storage(storage)
        if self.storage is None:
            raise InputError("shared evaluations need a storage (a URL or a journal file path), not None")
        self.study_name, self.poll_s, self.stale_after_s = study_name, poll_s, stale_after_s
        self.study = optuna.create_study(study_name=study_name, storage=self.storage, direction="minimize",
                                         load_if_exists=True)
        describe_study(self.study, ["metric"], attrs)
        self.host, self.pid = socket.gethostname(), os.getpid()

    # -- reading ---------------------------------------------------------------------------------------
    def _trials(self) -> list[optuna.trial.FrozenTrial]:
        return sorted(self.study.get_trials(deepcopy=False), key=lambda t: t._trial_id)

    @staticmethod
    def _owners(trials: Iterable[optuna.trial.FrozenTrial]) -> dict[str, optuna.trial.FrozenTrial]:
        """shape -> its one live trial (the lowest id among WAITING, RUNNING and COMPLETE ones)."""
        owners: dict[str, optuna.trial.FrozenTrial] = {}
        for t in trials:  # sorted by id
            shape = t.user_attrs.get("shape")
            if shape is not None and t.state in (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE):
                owners.setdefault(shape, t)
        return owners

    def known(self) -> dict[SubnetShape, tuple[float, float, dict | None]]:
        """Every completed evaluation in the storage: shape -> (metric, seconds, details)."""
        return {SubnetShape.parse(s): self._record(t) for s, t in self._owners(self._trials()).items()
                if t.state == TrialState.COMPLETE}

    @staticmethod
    def _record(trial: optuna.trial.FrozenTrial) -> tuple[float, float, dict | None]:
        return float(trial.value), float(trial.user_attrs.get("seconds", 0.0)), trial.user_attrs.get("details")

    # -- the work --------------------------------------------------------------------------------------
    def evaluate(self, shapes: Sequence[SubnetShape], evaluate: Evaluate
                 ) -> dict[SubnetShape, tuple[float, float, dict | None, bool]]:
        """``shape -> (metric, seconds, details, evaluated_here)`` for every shape of ``shapes``: found in the
        storage, evaluated here (``evaluate(shape)``) after claiming it, or waited for while another worker
        evaluates it. While waiting, this worker evaluates any other worker's unclaimed shapes."""
        wanted = [str(s) for s in dict.fromkeys(shapes)]
        owners = self._owners(self._trials())
        for shape in wanted:
            if shape not in owners:
                self.study.enqueue_trial({}, user_attrs={"shape": shape})
        here: set[str] = set()
        while True:
            trials = self._trials()
            owners = self._owners(trials)
            if all(s in owners and owners[s].state == TrialState.COMPLETE for s in wanted):
                return {SubnetShape.parse(s): (*self._record(owners[s]), s in here) for s in wanted}
            for shape in wanted:  # a failed (stale) claim leaves a shape without a live trial: enqueue it again
                if shape not in owners:
                    self.study.enqueue_trial({}, user_attrs={"shape": shape})
            waiting = [t for t in trials if t.state == TrialState.WAITING]
            mine = set(wanted)
            waiting.sort(key=lambda t: (t.user_attrs.get("shape") not in mine, t._trial_id))  # own shapes first
            if not any(self._work_on(t, evaluate, here) for t in waiting[:1]):
                if not waiting:
                    self._fail_stale(trials)
                    time.sleep(self.poll_s)

    def _work_on(self, trial: optuna.trial.FrozenTrial, evaluate: Evaluate, here: set[str]) -> bool:
        """Claim ``trial`` and evaluate its shape; False if another worker claimed it first."""
        try:
            if not self.storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING):
                return False
        except UpdateFinishedTrialError:
            return False
        shape = trial.user_attrs.get("shape")
        owner = self._owners(self._trials()).get(shape)
        if owner is not None and owner._trial_id != trial._trial_id:  # an older copy of the same shape
            self.storage.set_trial_user_attr(trial._trial_id, "duplicate_of", owner.number)
            self.storage.set_trial_state_values(trial._trial_id, TrialState.PRUNED)
            return True
        for key, value in (("host", self.host), ("pid", self.pid)):
            self.storage.set_trial_user_attr(trial._trial_id, key, value)
        try:
            metric, seconds, details = evaluate(SubnetShape.parse(shape))
        except BaseException:
            self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            raise
        self.storage.set_trial_user_attr(trial._trial_id, "seconds", round(float(seconds), 3))
        if details is not None:
            self.storage.set_trial_user_attr(trial._trial_id, "details", details)
        self.storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, values=[float(metric)])
        here.add(shape)
        return True

    def _fail_stale(self, trials: Sequence[optuna.trial.FrozenTrial]) -> None:
        """Fail the claims whose worker is gone, so their shapes are enqueued again."""
        now = datetime.now(timezone.utc)
        for t in trials:
            if t.state != TrialState.RUNNING:
                continue
            host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
            gone = host == self.host and pid is not None and pid != self.pid and not _alive(pid)
            started = t.datetime_start
            if started is not None and started.tzinfo is None:
                started = started.replace(tzinfo=timezone.utc)
            old = (self.stale_after_s is not None and started is not None
                   and (now - started).total_seconds() > self.stale_after_s)
            if gone or old:
                logger.warning("evaluation of %s claimed by %s:%s looks abandoned; evaluating it again",
                               t.user_attrs.get("shape"), host, pid)
                try:
                    self.storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                except UpdateFinishedTrialError:
                    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
