"""Feature probe: gradients against autograd, fits against scikit-learn at the same
regularisation (real demo features and separable synthetic data), streaming from a memmap,
statistics against numpy, selection on validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ssl_zoo.backbones import build_backbone
from ssl_zoo.data.sources import open_source
from ssl_zoo.errors import UserError
from ssl_zoo.evaluation import linear
from ssl_zoo.evaluation.features import extract_features
from ssl_zoo.evaluation.linear import (
    WEIGHT_DECAYS,
    Features,
    feature_statistics,
    linear_probe,
    softmax_ce_and_grads,
    stratified_split,
)


def gaussian_classes(n_train, n_test, classes, d, separation, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * separation
    ytr = torch.randint(0, classes, (n_train,), generator=g)
    yte = torch.randint(0, classes, (n_test,), generator=g)
    return (centres[ytr] + torch.randn(n_train, d, generator=g), ytr,
            centres[yte] + torch.randn(n_test, d, generator=g), yte)


def test_stacked_gradients_equal_autograd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (40,), generator=g)
    w = torch.randn(3, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    wds = torch.tensor([0.0, 0.3, 2.0], dtype=torch.float64)
    for k in range(3):  # each classifier on its own, written plainly
        ref = F.cross_entropy(x @ w[k].t() + b[k], y) + 0.5 * wds[k] * (w[k] ** 2).sum()
        ref.backward()
    with torch.no_grad():
        loss, gw, gb = softmax_ce_and_grads(w, b, x, y, wds, with_loss=True)
    refs = torch.stack([F.cross_entropy(x @ w[k].t() + b[k], y) + 0.5 * wds[k] * (w[k] ** 2).sum()
                        for k in range(3)]).detach()
    torch.testing.assert_close(loss, refs)
    torch.testing.assert_close(gw, w.grad)
    torch.testing.assert_close(gb, b.grad)


def sklearn_top1(xtr, ytr, xte, yte, wd):
    """scikit-learn's multinomial logistic regression at our regularisation, fitted to
    convergence on the same standardised features: top-1 on test."""
    from sklearn.linear_model import LogisticRegression

    mean, std = xtr.double().mean(0), xtr.double().std(0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    ztr, zte = ((xtr.double() - mean) / std).numpy(), ((xte.double() - mean) / std).numpy()
    # ours: mean CE + wd/2 |W|^2  ==  (1/N) * [sum CE + 1/(2C) |W|^2]  with C = 1 / (N wd)
    sk = LogisticRegression(C=1.0 / (len(ztr) * wd), tol=1e-8, max_iter=10_000).fit(ztr, ytr)
    return float((sk.predict(zte) == yte.numpy()).mean())


@pytest.fixture(scope="module")
def demo_features():
    """Real features: the demo images through a (seeded, randomly initialised) ConvNet."""
    torch.manual_seed(0)
    net, _ = build_backbone("convnet", image_size=32)
    data = open_source("demo")
    kw = dict(image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, device=torch.device("cpu"))
    train = data.eval_train or data.train
    return (extract_features(net, train, **kw), train.labels.long(),
            extract_features(net, data.test, **kw), data.test.labels.long())


@pytest.mark.parametrize("wd", [1e-2, 1e-1])
def test_probe_agrees_with_sklearn_on_real_demo_features(demo_features, wd):
    xtr, ytr, xte, yte = demo_features
    ours = linear_probe(xtr, ytr, xte, yte, weight_decays=(wd,), seed=0)
    assert ours["weight_decay"] == wd and ours["steps"] >= linear.MIN_STEPS
    ref = sklearn_top1(xtr, ytr, xte, yte, wd)
    assert ref > 0.2  # well above chance (0.1): the comparison means something
    assert abs(ours["test_top1"] - ref) <= 0.005


@pytest.mark.parametrize("wd", [1e-3, 1e-2])
def test_probe_agrees_with_sklearn_on_separable_data(wd):
    g = torch.Generator().manual_seed(7)
    w = torch.randn(32, 8, generator=g)
    xtr, xte = torch.randn(3000, 32, generator=g), torch.randn(2000, 32, generator=g)
    ytr, yte = (xtr @ w).argmax(1), (xte @ w).argmax(1)  # linearly separable by construction
    ours = linear_probe(xtr, ytr, xte, yte, weight_decays=(wd,), seed=0)
    ref = sklearn_top1(xtr, ytr, xte, yte, wd)
    assert abs(ours["test_top1"] - ref) <= 0.005 and ref > 0.85


def test_probe_streams_a_memmap(tmp_path, monkeypatch, demo_features):
    xtr, ytr, xte, yte = demo_features
    mm = np.lib.format.open_memmap(tmp_path / "train.npy", mode="w+", dtype=np.float16,
                                   shape=tuple(xtr.shape))
    mm[:] = xtr.numpy()
    mm.flush()
    mm = np.load(tmp_path / "train.npy", mmap_mode="r")
    # blocks of 64 rows and chunks of 100 rows: many blocks, many chunks, a ragged last one
    monkeypatch.setattr(linear, "MEMMAP_BLOCK_BYTES", 64 * 256 * 2)
    monkeypatch.setattr(linear, "MEMMAP_WINDOW_BLOCKS", 3)
    monkeypatch.setattr(linear, "STATS_CHUNK_BYTES", 100 * 256 * 8)
    assert Features(mm, torch.device("cpu"), "x").memmap
    streamed = linear_probe(mm, ytr, xte, yte, weight_decays=(1e-1,), seed=0)
    ref = sklearn_top1(torch.from_numpy(np.asarray(mm, dtype=np.float32)), ytr, xte, yte, 1e-1)
    assert abs(streamed["test_top1"] - ref) <= 0.005


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 300), block_rows=st.integers(1, 40), window=st.integers(1, 5),
       seed=st.integers(0, 10**6))
def test_memmap_order_is_a_permutation_of_the_rows(tmp_path_factory, n, block_rows, window,
                                                   seed):
    path = tmp_path_factory.mktemp("mm") / "x.npy"
    np.save(path, np.zeros((n, 4), np.float32))
    feats = Features(np.load(path, mmap_mode="r"), torch.device("cpu"), "x")
    rows = np.sort(np.random.default_rng(seed).choice(n, size=max(1, n // 2), replace=False))
    old = (linear.MEMMAP_BLOCK_BYTES, linear.MEMMAP_WINDOW_BLOCKS)
    try:
        linear.MEMMAP_BLOCK_BYTES, linear.MEMMAP_WINDOW_BLOCKS = block_rows * 16, window
        order = feats.shuffled(rows, np.random.default_rng(seed))
    finally:
        linear.MEMMAP_BLOCK_BYTES, linear.MEMMAP_WINDOW_BLOCKS = old
    assert sorted(order.tolist()) == rows.tolist()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 200), d=st.integers(1, 7), chunk=st.integers(1, 50),
       seed=st.integers(0, 10**6))
def test_chunked_statistics_equal_numpy(n, d, chunk, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) * rng.uniform(0.1, 100, d) + rng.normal(size=d) * 1e3)
    x[:, 0] = 5.0  # a constant dimension: its std is replaced by 1
    x = x.astype(np.float32)
    old = linear.STATS_CHUNK_BYTES
    try:
        linear.STATS_CHUNK_BYTES = chunk * d * 8
        mean, std = feature_statistics(Features(x, torch.device("cpu"), "x"))
    finally:
        linear.STATS_CHUNK_BYTES = old
    ref_std = x.astype(np.float64).std(0, ddof=1)
    ref_std[0] = 1.0
    np.testing.assert_allclose(mean.numpy(), x.astype(np.float64).mean(0), rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(std.numpy(), ref_std, rtol=1e-5)


def test_separable_features_are_classified_almost_perfectly():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(16, 5, generator=g)
    xtr, xte = torch.randn(800, 16, generator=g), torch.randn(400, 16, generator=g)
    ytr, yte = (xtr @ w).argmax(1), (xte @ w).argmax(1)  # linearly separable by construction
    res = linear_probe(xtr, ytr, xte, yte, seed=0)
    # (800 points in 16-D: the decay chosen on 80 validation points keeps a small margin)
    assert res["train_top1"] > 0.97 and res["test_top1"] > 0.93
    assert res["n_val"] + res["n_fit"] == 800 and 70 <= res["n_val"] <= 90


def test_weight_decay_is_chosen_on_validation_never_on_test():
    xtr, ytr, xte, yte = gaussian_classes(600, 300, 6, 40, 0.35, seed=3)  # noisy: wd matters
    res = linear_probe(xtr, ytr, xte, yte, seed=0)
    sweep = {float(k): v for k, v in res["sweep_val_top1"].items()}
    losses = {float(k): v for k, v in res["sweep_val_loss"].items()}
    assert set(sweep) == set(WEIGHT_DECAYS) == set(losses)
    best = max(sweep.values())
    assert res["val_top1"] == best
    tied = [wd for wd, v in sweep.items() if v == best]
    assert res["weight_decay"] == min(tied, key=losses.get)  # ties: lower validation loss
    # the test split plays no part in the choice: other test labels and features, same choice
    g = torch.Generator().manual_seed(9)
    other = linear_probe(xtr, ytr, torch.randn(50, 40, generator=g),
                         torch.randint(0, 6, (50,), generator=g), seed=0)
    for key in ("weight_decay", "val_top1", "sweep_val_top1", "sweep_val_loss", "train_top1"):
        assert other[key] == res[key]
    assert 0.0 <= other["test_top1"] <= 1.0


def test_probe_is_deterministic_and_invariant_to_per_feature_affine_maps():
    xtr, ytr, xte, yte = gaussian_classes(400, 200, 4, 12, 0.7, seed=4)
    a = linear_probe(xtr, ytr, xte, yte, seed=1)
    assert linear_probe(xtr, ytr, xte, yte, seed=1) == a
    g = torch.Generator().manual_seed(5)
    scale, shift = torch.rand(12, generator=g) * 50 + 0.1, torch.randn(12, generator=g) * 100
    b = linear_probe(xtr * scale + shift, ytr, xte * scale + shift, yte, seed=1)
    assert b["weight_decay"] == a["weight_decay"]
    assert abs(b["test_top1"] - a["test_top1"]) <= 2 / len(yte)  # float32 round-off only


@settings(max_examples=30, deadline=None)
@given(counts=st.lists(st.integers(1, 40), min_size=1, max_size=6),
       fraction=st.sampled_from([0.0, 0.1, 0.25, 0.5]), seed=st.integers(0, 1000))
def test_stratified_split_partitions_each_class(counts, fraction, seed):
    labels = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    fit, val = stratified_split(labels, fraction, seed)
    assert sorted(fit.tolist() + val.tolist()) == list(range(len(labels)))
    for i, c in enumerate(counts):
        expected = int(round(c * fraction)) if c > 1 else 0
        assert int((labels[val] == i).sum()) == expected
    f2, v2 = stratified_split(labels, fraction, seed)
    assert torch.equal(f2, fit) and torch.equal(v2, val)


def test_bad_input_is_refused_clearly():
    x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    with pytest.raises(UserError, match="labels"):
        linear_probe(x, y[:-1], x, y)
    with pytest.raises(UserError, match="dimensions"):
        linear_probe(x, y, torch.randn(5, 4), y[:5])
    with pytest.raises(UserError, match="NaN"):
        linear_probe(torch.full((20, 3), float("nan")), y, x, y)
    with pytest.raises(UserError, match="fraction"):
        stratified_split(y, 1.0, 0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_probe_on_the_gpu_agrees_with_the_cpu(demo_features):
    xtr, ytr, xte, yte = demo_features
    kw = dict(seed=0, weight_decays=(1e-1,))
    cpu = linear_probe(xtr, ytr, xte, yte, **kw)
    gpu = linear_probe(xtr, ytr, xte, yte, device="cuda", **kw)  # features copied there
    half = linear_probe(xtr.half(), ytr, xte.half(), yte, device="cuda", **kw)
    for res in (gpu, half):
        assert abs(res["test_top1"] - cpu["test_top1"]) <= 0.005
