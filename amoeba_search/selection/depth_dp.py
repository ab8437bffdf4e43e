"""DP depth shrinking (AmoebaLLM, Sec. 3.2), with row caching and resumable rows.

``D[n][m]`` is the best metric after removing ``m`` layers among the last ``n`` (layers ``N-n .. N-1``); every
layer below them is kept, so the whole network always runs. Rows are filled from the top layer down. In row
``n`` the layer being decided is ``L = N - n``:

- keep ``L``: the network of ``D[n-1][m]`` (it already keeps ``L``), so its metric is known, no evaluation;
- remove ``L``: the layers kept by ``D[n-1][m-1]`` above ``L``, on top of every layer below ``L``: evaluated.

The better one wins (the keep option on a tie). ``D[N][m]`` then gives the layers of depth ``N - m``. This is
a heuristic in general (it is exact for metrics additive over layers). All remove-candidates of a row share
the layers below ``L``, which is what the objective's prefix cache exploits.

``beam > 1`` widens the recursion: each cell keeps its ``beam`` best layer sets instead of one, and every one of
them is extended by "keep" and "remove" in the next row. ``beam=1`` is the paper's DP; a beam as large as the
largest binomial C(n, m) is exhaustive; in between, it trades about ``beam`` times the evaluations for fewer
joint removals missed (a layer that only pays off together with another one).

After each row a small JSON checkpoint (written atomically) lets an interrupted run continue from the last
completed row.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from amoeba_search.errors import InputError
from amoeba_search.jsonfile import read_json
from amoeba_search.paths import atomic_write_text
from amoeba_search.selection.calibration import better

CHECKPOINT_FORMAT = 2  # 2: a row holds a beam of candidates per cell

logger = logging.getLogger(__name__)


@dataclass
class DepthResult:
    """Kept layers and calibration metric per depth, and what computing them cost."""

    depth_layers: dict[int, list[int]]
    depth_metric: dict[int, float | None]
    evaluations: int                              # networks scored, across resumed runs
    evaluations_this_run: int = 0
    resumed_from_row: int = 0
    details: dict[str, Any] = field(default_factory=dict)


class DPCheckpoint:
    """The last completed DP row, in a JSON file valid only for the settings hashed into ``key``."""

    def __init__(self, path: str | Path, settings: dict[str, Any]):
        self.path = Path(path)
        self.key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        state = read_json(self.path, what="DP checkpoint", fix="it is damaged: remove it to start over")
        if state.get("format") != CHECKPOINT_FORMAT or state.get("key") != self.key:
            raise InputError(f"checkpoint {self.path} was made with other settings or another model; "
                             "remove it, or run without --resume to start over")
        return state

    def save(self, rows_done: int, row, evaluations: int) -> None:
        state = {"format": CHECKPOINT_FORMAT, "key": self.key, "rows_done": rows_done, "evaluations": evaluations,
                 "row": [[[list(tail), metric] for tail, metric in cell] for cell in row]}
        atomic_write_text(self.path, json.dumps(state))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def check_depth_range(num_layers: int, min_depth: int, keep_last: int) -> None:
    if not 1 <= min_depth <= num_layers:
        raise InputError(f"minimum depth must lie in 1..{num_layers} for this {num_layers}-layer model, got {min_depth}")
    if not 0 <= keep_last <= num_layers:
        raise InputError(f"layers kept at the top must lie in 0..{num_layers}, got {keep_last}")
    if keep_last > min_depth:
        raise InputError(f"keeping the top {keep_last} layers leaves no way to reach depth {min_depth}; "
                         f"lower --keep-last to at most {min_depth}")


def check_beam(beam: int) -> None:
    if beam < 1:
        raise InputError(f"the DP beam must be at least 1 (1 is the paper's DP), got {beam}")


def depth_dp(objective, *, min_depth: int, keep_last: int = 0, beam: int = 1,
             checkpoint: DPCheckpoint | None = None, resume: bool = False, progress: bool = False) -> DepthResult:
    """Fill the DP table of ``objective`` for depths ``min_depth..N`` (the top ``keep_last`` layers stay)."""
    n_layers = objective.num_layers
    check_depth_range(n_layers, min_depth, keep_last)
    check_beam(beam)
    most = n_layers - min_depth                         # layers removed at the smallest depth
    higher = objective.higher_is_better
    state = checkpoint.load() if (checkpoint is not None and resume) else None
    evaluated0 = objective.evaluations
    if state is not None:
        start, before = state["rows_done"], state["evaluations"]
        row = [[(tuple(tail), metric) for tail, metric in cell] for cell in state["row"]]
        logger.info("depth DP resumed from %s: %d of %d rows done, %d networks scored before",
                    checkpoint.path, start, n_layers, before)
    else:
        start, before = 0, 0
        row = [[((), objective.full())]]                # D[0][0]: nothing above, the full network
    # row[m]: up to ``beam`` candidates (kept layers above the decided one, metric), best first
    bar = tqdm(total=n_layers, initial=start, desc="depth DP rows", unit="row", disable=not progress)
    began = time.perf_counter()
    for n in range(start + 1, n_layers + 1):
        row_start = time.perf_counter()
        decided = n_layers - n                          # layer L decided in this row
        reach = min(most, n - keep_last) if n > keep_last else 0
        tails = [tail for m in range(1, reach + 1) for tail, _ in row[m - 1]]
        scores = iter(objective.evaluate(decided, tails))
        new = []
        for m in range(reach + 1):
            keeps = [((decided,) + tail, metric) for tail, metric in row[m]] if m < len(row) else []
            removes = [(tail, next(scores)) for tail, _ in row[m - 1]] if m >= 1 else []
            new.append(_best(keeps + removes, beam, higher))
        row = new
        done = before + objective.evaluations - evaluated0
        if checkpoint is not None:
            checkpoint.save(n, row, done)
        logger.info("depth DP row %d/%d (layer %d decided): %d networks scored, best metric %.4g at depth %d, %.2f s",
                    n, n_layers, decided, len(tails), row[-1][0][1], n_layers - (len(row) - 1),
                    time.perf_counter() - row_start)
        bar.set_postfix(evals=done)
        bar.update(1)
    bar.close()
    depth_layers = {n_layers - m: list(row[m][0][0]) for m in range(len(row))}
    depth_metric = {n_layers - m: row[m][0][1] for m in range(len(row))}
    this_run = objective.evaluations - evaluated0
    logger.info("depth DP done: depths %d..%d (beam %d), %d networks scored this run, %.1f s",
                min(depth_layers), n_layers, beam, this_run, time.perf_counter() - began)
    return DepthResult(depth_layers, depth_metric, before + this_run, this_run, start)


def _best(candidates: list, beam: int, higher: bool) -> list:
    """The ``beam`` best candidates by ``better``; the sort is stable, so "keep" options (listed first) stay
    ahead on ties."""
    def compare(a, b) -> int:
        if better(a[1], b[1], higher_is_better=higher):
            return -1
        return 1 if better(b[1], a[1], higher_is_better=higher) else 0
    return sorted(candidates, key=functools.cmp_to_key(compare))[:beam]


def dp_evaluation_count(num_layers: int, min_depth: int, keep_last: int = 0, beam: int = 1) -> int:
    """Networks the DP scores (the full one included). Cell (n, m) holds min(beam, C(n - keep_last, m)) layer
    sets, and row n evaluates "remove" on every set of the cells (n-1, m-1)."""
    most = num_layers - min_depth

    def size(n: int, m: int) -> int:
        return min(beam, math.comb(max(n - keep_last, 0), m))
    return 1 + sum(size(n - 1, m - 1) for n in range(keep_last + 1, num_layers + 1)
                   for m in range(1, min(most, n - keep_last) + 1))
