import itertools
import json
import random

import pytest

from amoeba_search.selection.depth_dp import DPCheckpoint, depth_dp, dp_evaluation_count
from amoeba_search.selection.objective import FunctionObjective


def _additive(costs):
    """Metric = sum of the costs of the removed layers: the DP recursion is exact for it."""
    return lambda kept: sum(c for i, c in enumerate(costs) if i not in kept)


def _arbitrary(seed):
    """A metric with no structure at all: a fixed random number per layer subset."""
    table = {}
    rng = random.Random(seed)

    def fn(kept):
        if kept not in table:
            table[kept] = rng.random()
        return table[kept]
    return fn


def reference_dp(n_layers, fn, *, min_depth, keep_last=0, higher_is_better=False):
    """The paper's recursion written out literally: both options of every cell are evaluated."""
    memo = {}

    def d(n, m):  # best (kept layers among the last n, metric) after removing m of them
        if (n, m) in memo:
            return memo[(n, m)]
        low = n_layers - n
        if m == 0:
            kept = tuple(range(low, n_layers))
            out = (kept, fn(tuple(range(n_layers))))
        else:
            options = []
            if m <= n - 1 and n - 1 - keep_last >= m:
                tail = d(n - 1, m)[0]
                options.append(((low,) + tail, fn(tuple(range(low)) + (low,) + tail)))
            if n > keep_last:
                tail = d(n - 1, m - 1)[0]
                options.append((tail, fn(tuple(range(low)) + tail)))
            if len(options) == 2:
                keep, remove = options
                better = remove[1] > keep[1] if higher_is_better else remove[1] < keep[1]
                out = remove if better else keep
            else:
                out = options[0]
        memo[(n, m)] = out
        return out

    return {n_layers - m: (list(d(n_layers, m)[0]), d(n_layers, m)[1]) for m in range(n_layers - min_depth + 1)}


@pytest.mark.parametrize("n_layers, keep_last, seed", [(5, 0, 0), (6, 0, 1), (7, 1, 2), (7, 2, 3), (4, 0, 4)])
def test_dp_equals_brute_force_for_an_additive_metric(n_layers, keep_last, seed):
    rng = random.Random(seed)
    costs = [rng.random() for _ in range(n_layers)]
    fn = _additive(costs)
    min_depth = max(1, keep_last)
    result = depth_dp(FunctionObjective(n_layers, fn), min_depth=min_depth, keep_last=keep_last)
    removable = range(n_layers - keep_last)
    for depth in range(min_depth, n_layers + 1):
        best = min(fn(tuple(sorted(set(range(n_layers)) - set(gone))))
                   for gone in itertools.combinations(removable, n_layers - depth))
        assert result.depth_metric[depth] == pytest.approx(best)
        assert fn(tuple(result.depth_layers[depth])) == pytest.approx(best)
        assert all(i in result.depth_layers[depth] for i in range(n_layers - keep_last, n_layers))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("higher", [False, True])
def test_dp_matches_the_literal_recursion_for_an_arbitrary_metric(seed, higher):
    n_layers, min_depth, keep_last = 7, 2 + seed % 3, seed % 2
    fn = _arbitrary(seed)
    got = depth_dp(FunctionObjective(n_layers, fn, higher_is_better=higher), min_depth=min_depth, keep_last=keep_last)
    want = reference_dp(n_layers, fn, min_depth=min_depth, keep_last=keep_last, higher_is_better=higher)
    assert {d: (got.depth_layers[d], got.depth_metric[d]) for d in got.depth_layers} == want


def test_the_dp_is_a_heuristic_and_can_miss_the_optimum():
    """A metric where removing two layers together is best but neither is good alone."""
    def fn(kept):
        gone = {0, 1, 2, 3} - set(kept)
        return 0.0 if gone == {1, 2} else 1.0 + len(gone)
    dp = depth_dp(FunctionObjective(4, fn), min_depth=2)
    assert dp.depth_metric[2] > 0.0  # brute force finds 0.0 by removing layers 1 and 2


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("higher", [False, True])
def test_a_beam_as_wide_as_the_largest_cell_is_exhaustive(seed, higher):
    n_layers, min_depth, keep_last = 7, 2, seed % 2
    fn = _arbitrary(seed)
    obj = FunctionObjective(n_layers, fn, higher_is_better=higher)
    got = depth_dp(obj, min_depth=min_depth, keep_last=keep_last, beam=20)  # C(7, 3) = 35 > 20 >= C(6, 3)
    pick = max if higher else min
    removable = range(n_layers - keep_last)
    for depth in range(min_depth, n_layers + 1):
        best = pick(fn(tuple(sorted(set(range(n_layers)) - set(gone))))
                    for gone in itertools.combinations(removable, n_layers - depth))
        assert got.depth_metric[depth] == best
        assert fn(tuple(got.depth_layers[depth])) == best
    assert obj.evaluations == dp_evaluation_count(n_layers, min_depth, keep_last, beam=20)


def test_a_beam_finds_the_joint_removal_the_plain_dp_misses():
    def fn(kept):
        gone = {0, 1, 2, 3} - set(kept)
        return 0.0 if gone == {1, 2} else 1.0 + len(gone)
    assert depth_dp(FunctionObjective(4, fn), min_depth=2).depth_metric[2] > 0.0
    wide = depth_dp(FunctionObjective(4, fn), min_depth=2, beam=2)
    assert wide.depth_metric[2] == 0.0 and wide.depth_layers[2] == [0, 3]


@pytest.mark.parametrize("beam", [1, 2, 3])
@pytest.mark.parametrize("keep_last", [0, 2])
def test_evaluation_count_with_a_beam(beam, keep_last):
    obj = FunctionObjective(9, _arbitrary(beam + keep_last))
    result = depth_dp(obj, min_depth=3, keep_last=keep_last, beam=beam)
    assert result.evaluations == obj.evaluations == dp_evaluation_count(9, 3, keep_last, beam=beam)


def test_beam_must_be_positive():
    with pytest.raises(ValueError, match="beam"):
        depth_dp(FunctionObjective(4, lambda kept: 0.0), min_depth=2, beam=0)


def test_evaluation_count_and_tie_keeps_the_layer():
    obj = FunctionObjective(6, lambda kept: 1.0)
    result = depth_dp(obj, min_depth=3)
    assert result.evaluations == obj.evaluations == dp_evaluation_count(6, 3)
    # all ties: a layer is kept whenever keeping it is possible, so the first decided (top) layers go
    assert result.depth_layers[4] == [0, 1, 2, 3]


@pytest.mark.parametrize("beam", [1, 3])
def test_resume_after_a_crash_gives_the_same_result_with_fewer_evaluations(tmp_path, beam):
    fn = _arbitrary(11)
    full = depth_dp(FunctionObjective(8, fn), min_depth=3, beam=beam)
    ckpt = DPCheckpoint(tmp_path / "s.json.checkpoint.json", {"settings": 1})

    class Crash(RuntimeError):
        pass

    def crashing(kept):
        if min(set(range(8)) - set(kept), default=8) <= 2:
            raise Crash  # row 6 decides layer 2: its first candidate removes it
        return fn(kept)

    with pytest.raises(Crash):
        depth_dp(FunctionObjective(8, crashing), min_depth=3, beam=beam, checkpoint=ckpt)
    state = json.loads(ckpt.path.read_text())
    assert state["rows_done"] == 5
    resumed_obj = FunctionObjective(8, fn)
    resumed = depth_dp(resumed_obj, min_depth=3, beam=beam, checkpoint=ckpt, resume=True)
    assert resumed.depth_layers == full.depth_layers and resumed.depth_metric == full.depth_metric
    assert resumed.resumed_from_row == 5
    assert resumed_obj.evaluations < full.evaluations
    assert resumed.evaluations == full.evaluations  # counted across both runs


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    path = tmp_path / "c.json"
    depth_dp(FunctionObjective(4, _arbitrary(0)), min_depth=2, checkpoint=DPCheckpoint(path, {"a": 1}))
    with pytest.raises(ValueError, match="other settings"):
        depth_dp(FunctionObjective(4, _arbitrary(0)), min_depth=2, checkpoint=DPCheckpoint(path, {"a": 2}),
                 resume=True)


@pytest.mark.parametrize("min_depth, keep_last, message", [(0, 0, "minimum depth"), (7, 0, "minimum depth"),
                                                           (2, 3, "keep-last")])
def test_bad_ranges(min_depth, keep_last, message):
    with pytest.raises(ValueError, match=message):
        depth_dp(FunctionObjective(6, lambda kept: 0.0), min_depth=min_depth, keep_last=keep_last)
