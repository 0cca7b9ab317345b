"""kNN, linear probe and clustering metrics against slow, independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssl_zoo.evaluation.clustering import assignment_metrics, kmeans_clustering_metrics, purity
from ssl_zoo.evaluation.faiss_utils import inner_product_search, kmeans
from ssl_zoo.evaluation.knn import knn_accuracy, knn_scores
from ssl_zoo.evaluation.linear import linear_probe


def slow_weighted_knn(train, ytr, test, k, temperature, num_classes):
    """Plain loops in float64: cosine similarity, top-k, exp(sim/T) votes per class."""
    out = []
    tr = [np.asarray(v, dtype=np.float64) / np.linalg.norm(v) for v in train.numpy()]
    for q in test.numpy():
        q = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
        sims = sorted(((float(q @ t), i) for i, t in enumerate(tr)), reverse=True)[:k]
        votes = [0.0] * num_classes
        for s, i in sims:
            votes[int(ytr[i])] += math.exp(s / temperature) if temperature else 1.0
        out.append(votes)
    return torch.tensor(out, dtype=torch.float64)


def test_weighted_knn_equals_slow_loop():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(60, 7, generator=g), torch.randn(15, 7, generator=g)
    ytr = torch.randint(0, 4, (60,), generator=g)
    for k, t in ((1, 0.1), (5, 0.07), (20, 0.5), (7, None)):
        ours = knn_scores(train, ytr, test, k, t, 4)
        ref = slow_weighted_knn(train, ytr, test, k, t, 4)
        torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-4)


def test_uniform_knn_agrees_with_sklearn():
    from sklearn.neighbors import KNeighborsClassifier

    g = torch.Generator().manual_seed(1)
    centers = torch.randn(5, 16, generator=g) * 2
    ytr = torch.randint(0, 5, (400,), generator=g)
    yte = torch.randint(0, 5, (200,), generator=g)
    train = centers[ytr] + torch.randn(400, 16, generator=g)
    test = centers[yte] + torch.randn(200, 16, generator=g)
    ours = knn_scores(train, ytr, test, 11, None, 5).argmax(1)  # odd k: no ties with 5 classes?
    clf = KNeighborsClassifier(11, algorithm="brute", metric="cosine").fit(train, ytr)
    ref = torch.from_numpy(clf.predict(test))
    assert float((ours == ref).float().mean()) > 0.98  # ties may break differently


def test_knn_on_separable_clusters_is_perfect_and_k_is_clamped():
    g = torch.Generator().manual_seed(2)
    centers = torch.eye(3) * 10
    ytr, yte = torch.arange(3).repeat(10), torch.arange(3).repeat(4)
    train = centers[ytr] + 0.1 * torch.randn(30, 3, generator=g)
    test = centers[yte] + 0.1 * torch.randn(12, 3, generator=g)
    acc = knn_accuracy(train, ytr, test, yte, k=200, temperature=0.1, num_classes=3)
    assert acc["top1"] == 1.0 and acc["k"] == 30


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(0.01, 100.0), seed=st.integers(0, 1000))
def test_knn_is_invariant_to_feature_scale(scale, seed):
    g = torch.Generator().manual_seed(seed)
    train, test = torch.randn(30, 5, generator=g), torch.randn(6, 5, generator=g)
    ytr = torch.randint(0, 3, (30,), generator=g)
    a = knn_scores(train, ytr, test, 5, 0.1, 3)
    b = knn_scores(train * scale, ytr, test * scale, 5, 0.1, 3)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_chunked_search_equals_one_chunk():
    g = torch.Generator().manual_seed(3)
    db, q = torch.randn(500, 8, generator=g), torch.randn(123, 8, generator=g)
    s1, i1 = inner_product_search(q, db, 7, chunk_size=10_000)
    s2, i2 = inner_product_search(q, db, 7, chunk_size=17)
    assert torch.equal(i1, i2) and torch.allclose(s1, s2)
    brute = (q @ db.t()).topk(7, dim=1)
    assert torch.equal(i1, brute.indices)


def test_linear_probe_separable_and_chosen_on_validation():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(10, 4, generator=g)
    xtr, xte = torch.randn(600, 10, generator=g), torch.randn(300, 10, generator=g)
    ytr, yte = (xtr @ w).argmax(1), (xte @ w).argmax(1)
    res = linear_probe(xtr, ytr, xte, yte, seed=0)
    assert res["test_top1"] > 0.95
    assert res["val_top1"] == max(res["sweep_val_top1"].values())
    assert str(res["weight_decay"]) in res["sweep_val_top1"]


def slow_purity(a, y):
    total = 0
    for c in set(a):
        members = [y[i] for i in range(len(a)) if a[i] == c]
        total += max(members.count(v) for v in set(members))
    return total / len(a)


def test_clustering_metrics_on_hand_made_labelings():
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    perm = torch.tensor([2, 2, 2, 0, 0, 0, 1, 1, 1])  # same partition, other names
    m = assignment_metrics(perm, y)
    assert m["nmi"] == pytest.approx(1.0) and m["ari"] == pytest.approx(1.0)
    assert m["purity"] == 1.0
    one = assignment_metrics(torch.zeros(9, dtype=torch.long), y)
    assert one["nmi"] == pytest.approx(0.0) and one["purity"] == pytest.approx(1 / 3)
    g = torch.Generator().manual_seed(5)
    a, yy = torch.randint(0, 7, (200,), generator=g), torch.randint(0, 4, (200,), generator=g)
    assert purity(a, yy) == pytest.approx(slow_purity(a.tolist(), yy.tolist()))


def test_kmeans_recovers_separated_blobs():
    g = torch.Generator().manual_seed(6)
    centers = torch.randn(4, 16, generator=g) * 10
    y = torch.arange(4).repeat_interleave(50)
    x = centers[y] + 0.3 * torch.randn(200, 16, generator=g)
    _, assign, _ = kmeans(x, 4, seed=0, nredo=3)
    assert assignment_metrics(assign, y)["nmi"] == pytest.approx(1.0)
    assert kmeans_clustering_metrics(x, y, 4)["ari"] == pytest.approx(1.0)


def test_pictures_are_written_and_open(tmp_path):
    from PIL import Image

    from ssl_zoo.evaluation import plots

    g = torch.Generator().manual_seed(7)
    feats, labels = torch.randn(120, 8, generator=g), torch.randint(0, 3, (120,), generator=g)
    images = torch.randint(0, 256, (120, 3, 16, 16), dtype=torch.uint8, generator=g)
    paths = [
        plots.tsne_map(feats, labels, tmp_path / "t.png", class_names=["a", "b", "c"]),
        plots.contact_sheet(images, labels, tmp_path / "c.png"),
        plots.loss_curve([{"step": i, "loss": 1 / (i + 1), "ln_k": 0.5} for i in range(5)],
                         tmp_path / "l.png"),
        plots.knn_curves({"swav": [(1, 0.3), (2, 0.4)]}, tmp_path / "k.png"),
        plots.metric_bars({"swav": {"knn_k20": 0.4, "nmi": 0.2}}, tmp_path / "b.png"),
    ]
    for p in paths:
        with Image.open(p) as im:
            assert im.size[0] > 100 and im.size[1] > 100
