import numpy as np
import pytest

from amoeba_search.search.pareto import hypervolume_2d, pareto_front, pareto_mask


def test_front_by_hand():
    pts = [[1, 5], [2, 3], [3, 4], [4, 1], [2, 3], [5, 5]]
    assert pareto_mask(pts).tolist() == [True, True, False, True, True, False]
    assert pareto_front(pts).tolist() == [0, 1, 4, 3]


def test_hypervolume_by_hand():
    # Staircase of (1,5), (2,3), (4,1) against reference (6,6): 5*1 + 4*2 + 2*2 = 17.
    assert hypervolume_2d([[1, 5], [2, 3], [4, 1]], [6, 6]) == pytest.approx(17.0)
    # Dominated and out-of-reference points add nothing.
    assert hypervolume_2d([[1, 5], [2, 3], [4, 1], [3, 4], [7, 0]], [6, 6]) == pytest.approx(17.0)
    assert hypervolume_2d([[7, 7]], [6, 6]) == 0.0


def test_front_of_random_points_is_mutually_non_dominated():
    pts = np.random.default_rng(0).random((200, 2))
    front = pts[pareto_front(pts)]
    assert np.all(np.diff(front[:, 0]) >= 0) and np.all(np.diff(front[:, 1]) <= 0)
    for p in pts:
        assert not np.any(np.all(front <= p, axis=1) & np.any(front < p, axis=1)) or not any((front == p).all(1))
