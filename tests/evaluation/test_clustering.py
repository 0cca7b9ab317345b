"""NMI, ARI and purity against hand-made labelings and slow definitions; k-means on blobs."""

from __future__ import annotations

import math
from collections import Counter
from itertools import combinations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ssl_zoo.errors import UserError
from ssl_zoo.evaluation.clustering import (
    assignment_metrics,
    contingency,
    kmeans_clustering_metrics,
    purity,
)


def slow_purity(a: list[int], y: list[int]) -> float:
    total = 0
    for c in set(a):
        members = [y[i] for i in range(len(a)) if a[i] == c]
        total += max(members.count(v) for v in set(members))
    return total / len(a)


def slow_nmi(a: list[int], y: list[int]) -> float:
    """Mutual information over the arithmetic mean of the two entropies (float64 sums)."""
    n = len(a)
    pa, py, pj = Counter(a), Counter(y), Counter(zip(a, y))
    mi = sum(c / n * math.log(n * c / (pa[i] * py[j])) for (i, j), c in pj.items())
    ha = -sum(c / n * math.log(c / n) for c in pa.values())
    hy = -sum(c / n * math.log(c / n) for c in py.values())
    if ha == 0 and hy == 0:
        return 1.0
    return mi / ((ha + hy) / 2)


def slow_ari(a: list[int], y: list[int]) -> float:
    """Adjusted Rand index from a loop over all pairs of samples."""
    both = same_a = same_y = pairs = 0
    for i, j in combinations(range(len(a)), 2):
        sa, sy = a[i] == a[j], y[i] == y[j]
        both += sa and sy
        same_a += sa
        same_y += sy
        pairs += 1
    expected = same_a * same_y / pairs
    return (both - expected) / ((same_a + same_y) / 2 - expected)


def test_hand_made_example():
    y = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    a = [5, 5, 7, 7, 7, 7, 9, 9, 9]  # cluster 5: {0, 0}, 7: {0, 1, 1, 1}, 9: {2, 2, 2}
    assert purity(a, y) == pytest.approx(8 / 9)
    assert contingency(a, y).tolist() == [[2, 0, 0], [1, 3, 0], [0, 0, 3]]
    m = assignment_metrics(torch.tensor(a), torch.tensor(y))
    assert m["purity"] == pytest.approx(8 / 9) and m["clusters_used"] == 3
    assert m["nmi"] == pytest.approx(slow_nmi(a, y), abs=1e-12)
    assert m["ari"] == pytest.approx(slow_ari(a, y), abs=1e-12)


def test_renamed_clusters_score_one_and_a_single_cluster_scores_nothing():
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    renamed = torch.tensor([2, 2, 2, 0, 0, 0, 1, 1, 1])
    m = assignment_metrics(renamed, y)
    assert m["nmi"] == pytest.approx(1.0) and m["ari"] == pytest.approx(1.0)
    assert m["purity"] == 1.0
    one = assignment_metrics(torch.zeros(9, dtype=torch.long), y)
    assert one["nmi"] == pytest.approx(0.0) and one["ari"] == pytest.approx(0.0)
    assert one["purity"] == pytest.approx(1 / 3)
    singletons = assignment_metrics(torch.arange(9), y)  # purity's known weakness: 1.0
    assert singletons["purity"] == 1.0 and singletons["ari"] == pytest.approx(0.0)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(2, 40))
def test_metrics_equal_slow_definitions(data, n):
    a = data.draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    y = data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    m = assignment_metrics(torch.tensor(a), torch.tensor(y))
    assert m["purity"] == pytest.approx(slow_purity(a, y), abs=1e-12)
    assert m["nmi"] == pytest.approx(slow_nmi(a, y), abs=1e-9)
    same_a = sum(x == z for x, z in combinations(a, 2))
    same_y = sum(x == z for x, z in combinations(y, 2))
    pairs = n * (n - 1) / 2
    assume((same_a + same_y) / 2 != same_a * same_y / pairs)  # ARI is 0/0 otherwise
    assert m["ari"] == pytest.approx(slow_ari(a, y), abs=1e-9)


def test_kmeans_metrics_recover_separated_blobs():
    g = torch.Generator().manual_seed(6)
    centres = torch.randn(6, 24, generator=g) * 10
    y = torch.arange(6).repeat_interleave(40)
    x = centres[y] + 0.5 * torch.randn(240, 24, generator=g)
    m = kmeans_clustering_metrics(x, y, seed=0)
    assert m["k"] == 6 and m["clusters_used"] == 6
    assert m["nmi"] == pytest.approx(1.0) and m["ari"] == pytest.approx(1.0)
    assert m["purity"] == 1.0


def test_bad_input_is_refused_clearly():
    with pytest.raises(UserError, match="3 cluster assignments for 2 labels"):
        purity([0, 1, 1], [0, 1])
    with pytest.raises(UserError, match="at least one sample"):
        purity([], [])
    with pytest.raises(UserError, match="integer"):
        assignment_metrics(torch.tensor([0.5, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(UserError, match="labels for"):
        kmeans_clustering_metrics(torch.randn(10, 3), torch.zeros(9, dtype=torch.long), 2)
