"""Weighted kNN against a float64 loop and scikit-learn; protocols, clamping, properties."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssl_zoo.errors import UserError
from ssl_zoo.evaluation.knn import (
    KNN_PROTOCOLS,
    knn_classify,
    knn_protocols,
)


def slow_knn_votes(train, ytr, test, k, temperature, num_classes):
    """Python loops in float64: cosine similarity, sort, top-k, exp(sim / T) (or 1) per class.

    Returns (votes, voted) per query: the class sums and the set of classes that got a vote.
    """
    tr = [np.asarray(v, dtype=np.float64) / np.linalg.norm(v) for v in train.tolist()]
    out, voted = [], []
    for q in test.tolist():
        q = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
        sims = sorted(((float(q @ t), i) for i, t in enumerate(tr)), reverse=True)[:k]
        votes = [0.0] * num_classes
        got = set()
        for s, i in sims:
            votes[int(ytr[i])] += 1.0 if temperature is None else math.exp(s / temperature)
            got.add(int(ytr[i]))
        out.append(votes)
        voted.append(got)
    return out, voted


def slow_accuracy(votes, voted, y):
    top1 = top5 = 0
    for v, got, label in zip(votes, voted, y.tolist()):
        best = max(range(len(v)), key=lambda c: (v[c], -c))  # ties: the smallest class
        top1 += best == label
        ranked = sorted(got, key=lambda c: (-v[c], c))[:5]
        top5 += label in ranked
    return top1 / len(votes), top5 / len(votes)


def kth_gap(train, test, k):
    """Smallest float64 gap between the k-th and (k+1)-th cosine similarity over queries."""
    tr = torch.nn.functional.normalize(train.double(), dim=1)
    te = torch.nn.functional.normalize(test.double(), dim=1)
    s = (te @ tr.t()).sort(dim=1, descending=True).values
    return (s[:, k - 1] - s[:, k]).abs() if k < s.shape[1] else torch.full((len(s),), 1.0)


def clustered(n_train, n_test, classes, d, spread, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * 2
    ytr = torch.randint(0, classes, (n_train,), generator=g)
    yte = torch.randint(0, classes, (n_test,), generator=g)
    xtr = centres[ytr] + spread * torch.randn(n_train, d, generator=g)
    xte = centres[yte] + spread * torch.randn(n_test, d, generator=g)
    return xtr, ytr, xte, yte


@pytest.mark.parametrize("k,temperature", [(1, 0.1), (5, 0.07), (20, 0.5), (7, None), (60, 1.0)])
def test_weighted_knn_equals_slow_loop(k, temperature):
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(60, 7, generator=g), torch.randn(25, 7, generator=g)
    ytr = torch.randint(0, 4, (60,), generator=g)
    assert kth_gap(train, test, k).min() > 1e-5  # tie-free neighbour sets
    scores, pred = knn_classify(train, ytr, test, k, temperature, 4)
    votes, _ = slow_knn_votes(train, ytr, test, k, temperature, 4)
    ref = torch.tensor(votes, dtype=torch.float64)
    if temperature is not None:  # our votes are exp((s - 1) / T): the same up to exp(1 / T)
        ref = ref * math.exp(-1.0 / temperature)
    torch.testing.assert_close(scores, ref, rtol=1e-4, atol=1e-9)
    assert torch.equal(pred, ref.argmax(1))


def test_accuracy_and_both_protocols_equal_slow_loop():
    xtr, ytr, xte, yte = clustered(400, 100, 12, 16, 4.0, seed=0)  # overlapping classes
    res = knn_protocols(xtr, ytr, xte, yte, num_classes=12)
    assert set(res) == set(KNN_PROTOCOLS)
    for name, (k, t) in KNN_PROTOCOLS.items():
        assert kth_gap(xtr, xte, k).min() > 1e-5  # tie-free neighbour sets
        top1, top5 = slow_accuracy(*slow_knn_votes(xtr, ytr, xte, k, t, 12), yte)
        assert res[name]["top1"] == pytest.approx(top1, abs=1e-12)
        assert res[name]["top5"] == pytest.approx(top5, abs=1e-12)
        assert res[name]["k"] == k and res[name]["temperature"] == t
        assert 0 < res[name]["top1"] < res[name]["top5"] < 1  # the case is not trivial
        single = knn_protocols(xtr, ytr, xte, yte, protocols={"one": (k, t)}, num_classes=12)
        assert single["one"] == res[name]


def test_top5_counts_only_classes_that_got_a_vote():
    # every neighbour of the query has class 0; the label 3 gets no vote and is no top-5 hit
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2]])
    res = knn_protocols(train, torch.tensor([0, 0, 0]), torch.tensor([[1.0, 0.05]]),
                        torch.tensor([3]), protocols={"one": (3, 0.1)}, num_classes=6)["one"]
    assert res["top1"] == 0.0 and res["top5"] == 0.0


def test_uniform_knn_agrees_exactly_with_sklearn_on_tie_free_queries():
    from sklearn.neighbors import KNeighborsClassifier

    xtr, ytr, xte, yte = clustered(500, 300, 5, 16, 2.0, seed=2)
    for k in (1, 10, 11):
        free = kth_gap(xtr, xte, k) > 1e-5  # neighbour sets identical in float32 and float64
        assert free.float().mean() > 0.95
        _, ours = knn_classify(xtr, ytr, xte, k, None, 5)
        clf = KNeighborsClassifier(k, algorithm="brute", metric="cosine").fit(xtr.numpy(), ytr)
        ref = torch.from_numpy(clf.predict(xte.numpy()))
        assert torch.equal(ours[free], ref[free])  # vote ties: both take the smallest class


def test_weighted_knn_agrees_with_sklearn_given_the_same_weights():
    from sklearn.neighbors import KNeighborsClassifier

    xtr, ytr, xte, yte = clustered(500, 300, 5, 16, 2.5, seed=3)
    t = 0.07
    free = kth_gap(xtr, xte, 20) > 1e-5
    _, ours = knn_classify(xtr, ytr, xte, 20, t, 5)
    clf = KNeighborsClassifier(20, algorithm="brute", metric="cosine",
                               weights=lambda dist: np.exp((1.0 - dist) / t))
    ref = torch.from_numpy(clf.fit(xtr.numpy(), ytr).predict(xte.numpy()))
    assert torch.equal(ours[free], ref[free])


def test_separable_clusters_give_perfect_accuracy_under_both_protocols():
    g = torch.Generator().manual_seed(4)
    centres = torch.eye(10, 32) * 10
    ytr, yte = torch.arange(10).repeat(30), torch.arange(10).repeat(20)
    xtr = centres[ytr] + 0.5 * torch.randn(300, 32, generator=g)
    xte = centres[yte] + 0.5 * torch.randn(200, 32, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # k=200 < 300: no clamping warning
        res = knn_protocols(xtr, ytr, xte, yte)
    for r in res.values():
        assert r["top1"] == 1.0 and r["top5"] == 1.0 and "note" not in r


def test_k_larger_than_train_set_is_clamped_and_said():
    xtr, ytr, xte, yte = clustered(30, 10, 3, 4, 0.1, seed=5)
    with pytest.warns(UserWarning, match="k=200"):
        res = knn_protocols(xtr, ytr, xte, yte, protocols={"one": (200, 0.1)},
                            num_classes=3)["one"]
    assert res["k"] == 30 and res["k_requested"] == 200 and "clamped" in res["note"]
    with pytest.warns(UserWarning):
        clamped = knn_classify(xtr, ytr, xte, 200, 0.1, 3)[0]
    torch.testing.assert_close(clamped, knn_classify(xtr, ytr, xte, 30, 0.1, 3)[0])


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_chunking_changes_nothing(chunk):
    xtr, ytr, xte, yte = clustered(220, 17, 4, 6, 1.5, seed=6)
    whole = knn_classify(xtr, ytr, xte, 9, 0.07, 4, chunk_size=10_000)[0]
    assert torch.equal(knn_classify(xtr, ytr, xte, 9, 0.07, 4, chunk_size=chunk)[0], whole)
    a = knn_protocols(xtr, ytr, xte, yte, chunk_size=chunk)
    assert a == knn_protocols(xtr, ytr, xte, yte, chunk_size=10_000)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), log_scale=st.floats(-3, 3))
def test_knn_is_invariant_to_positive_rescaling_of_each_feature_vector(seed, log_scale):
    g = torch.Generator().manual_seed(seed)
    train, test = torch.randn(40, 5, generator=g), torch.randn(8, 5, generator=g)
    ytr = torch.randint(0, 3, (40,), generator=g)
    a = knn_classify(train, ytr, test, 6, 0.1, 3)[0]
    # one global factor, and a different positive factor per row
    s_tr = 10 ** (log_scale + torch.rand(40, 1, generator=g))
    s_te = 10 ** (log_scale + torch.rand(8, 1, generator=g))
    b = knn_classify(train * s_tr, ytr, test * s_te, 6, 0.1, 3)[0]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_knn_is_equivariant_to_train_order_and_class_names(seed):
    g = torch.Generator().manual_seed(seed)
    train, test = torch.randn(50, 6, generator=g), torch.randn(10, 6, generator=g)
    ytr = torch.randint(0, 4, (50,), generator=g)
    scores = knn_classify(train, ytr, test, 7, 0.2, 4)[0]
    perm = torch.randperm(50, generator=g)
    torch.testing.assert_close(knn_classify(train[perm], ytr[perm], test, 7, 0.2, 4)[0], scores,
                               rtol=1e-6, atol=0)
    rename = torch.randperm(4, generator=g)  # class c is called rename[c]
    renamed = knn_classify(train, rename[ytr], test, 7, 0.2, 4)[0]
    torch.testing.assert_close(renamed[:, rename], scores, rtol=0, atol=0)


def test_bad_input_is_refused_clearly():
    xtr, ytr, xte, yte = clustered(20, 5, 3, 4, 1.0, seed=7)
    with pytest.raises(UserError, match="labels"):
        knn_classify(xtr, ytr[:-1], xte, 3, 0.1, 3)[0]
    with pytest.raises(UserError, match=r"\[0, 3\)"):
        knn_classify(xtr, ytr + 1, xte, 3, 0.1, 3)[0]
    with pytest.raises(UserError, match="temperature"):
        knn_classify(xtr, ytr, xte, 3, 0.0, 3)[0]
    with pytest.raises(UserError, match="k >= 1"):
        knn_classify(xtr, ytr, xte, 0, 0.1, 3)[0]
    with pytest.raises(UserError, match="empty"):
        knn_classify(xtr[:0], ytr[:0], xte, 3, 0.1, 3)[0]
    with pytest.raises(UserError, match="chunk_size"):
        knn_classify(xtr, ytr, xte, 3, 0.1, 3, chunk_size=0)[0]
    with pytest.raises(UserError, match="no kNN protocol"):
        knn_protocols(xtr, ytr, xte, yte, protocols={})
    with pytest.raises(UserError, match="at least one test"):
        knn_protocols(xtr, ytr, xte[:0], yte[:0])
    with pytest.raises(UserError, match="temperature"):
        knn_protocols(xtr, ytr, xte, yte, protocols={"bad": (3, -1.0)})
