"""Linear probe: gradient against autograd, fit against scikit-learn, selection on validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ssl_zoo.errors import UserError
from ssl_zoo.evaluation.linear import (
    WEIGHT_DECAYS,
    fit_logistic,
    linear_probe,
    logistic_loss_and_grad,
    stratified_split,
)


def gaussian_classes(n_train, n_test, classes, d, separation, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * separation
    ytr = torch.randint(0, classes, (n_train,), generator=g)
    yte = torch.randint(0, classes, (n_test,), generator=g)
    return (centres[ytr] + torch.randn(n_train, d, generator=g), ytr,
            centres[yte] + torch.randn(n_test, d, generator=g), yte)


def test_hand_written_gradient_equals_autograd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (40,), generator=g)
    w = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    ref = F.cross_entropy(x @ w.t() + b, y) + 0.5 * 0.3 * (w ** 2).sum()
    ref.backward()
    with torch.no_grad():
        loss, gw, gb = logistic_loss_and_grad(w, b, x, x.t().contiguous(), y, 0.3)
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(gw, w.grad)
    torch.testing.assert_close(gb, b.grad)


@pytest.mark.parametrize("wd", [1e-3, 1e-1])
def test_fit_equals_sklearn_logistic_regression(wd):
    from sklearn.linear_model import LogisticRegression

    x, y, _, _ = gaussian_classes(300, 1, 4, 8, 0.8, seed=1)
    x = x.double()
    ours = fit_logistic(x, y, 4, wd, max_iter=500, dtype=torch.float64)
    # ours: mean CE + wd/2 |W|^2  ==  (1/N) * [sum CE + 1/(2C) |W|^2]  with C = 1 / (N wd)
    sk = LogisticRegression(C=1.0 / (len(x) * wd), tol=1e-10, max_iter=10_000).fit(x.numpy(), y)
    p_ours = torch.softmax(ours.logits(x), 1).numpy()
    np.testing.assert_allclose(p_ours, sk.predict_proba(x.numpy()), atol=2e-4)


def test_separable_features_are_classified_almost_perfectly():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(16, 5, generator=g)
    xtr, xte = torch.randn(800, 16, generator=g), torch.randn(400, 16, generator=g)
    ytr, yte = (xtr @ w).argmax(1), (xte @ w).argmax(1)  # linearly separable by construction
    res = linear_probe(xtr, ytr, xte, yte, seed=0)
    assert res["train_top1"] > 0.99 and res["test_top1"] > 0.95
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
