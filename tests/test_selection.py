"""SpecPC's token selection as a pure function: top scores + neighbours + required, exact budget."""

import numpy as np
import pytest
import torch

from draft_rag.scoring import pool
from draft_rag.specpc import select


def _all(n):
    return np.ones(n, dtype=bool)


def test_keeps_required_then_top_scored_with_neighbours_in_score_order():
    scores = np.zeros(100)
    scores[50], scores[20] = 1.0, 0.5
    required = np.zeros(100, dtype=bool)
    required[95:] = True  # the window
    keep = select(scores, _all(100), required, budget=5 + 3 + 3, neighbor_tokens=2)
    # 50 with its 2 nearest neighbours, then 20 with its 2 nearest neighbours, then the window
    assert keep.tolist() == [19, 20, 21, 49, 50, 51, 95, 96, 97, 98, 99]


def test_budget_is_exact_and_cut_follows_score_order():
    rng = np.random.default_rng(0)
    scores = rng.random(300)
    required = np.zeros(300, dtype=bool)
    required[-10:] = True
    for budget in (10, 11, 57, 123, 299, 300):
        keep = select(scores, _all(300), required, budget, neighbor_tokens=4)
        assert len(keep) == budget and len(set(keep.tolist())) == budget
        assert required[keep].sum() == 10
    keep = select(scores, _all(300), required, 11, neighbor_tokens=0)
    assert keep[0] == int(np.argmax(scores[:-10]))


def test_neighbours_never_cross_into_unselectable_positions():
    scores = np.zeros(20)
    scores[10] = 1
    selectable = _all(20)
    selectable[11] = False  # e.g. a template token
    keep = select(scores, selectable, np.zeros(20, dtype=bool), budget=3, neighbor_tokens=4)
    assert 11 not in keep.tolist() and 10 in keep.tolist() and len(keep) == 3


def test_protected_larger_than_budget_is_an_error():
    with pytest.raises(ValueError, match="smaller than the protected"):
        select(np.zeros(10), _all(10), _all(10), budget=5, neighbor_tokens=0)


def test_max_pool_is_centred_and_keeps_length():
    x = torch.zeros(11)
    x[5] = 1
    assert pool(x, "max", 3).tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0]
    assert pool(x, "max", 4).shape == (11,)
    assert pool(x, "none", 7).tolist() == x.tolist()
