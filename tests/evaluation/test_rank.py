"""RankMe against numpy's SVD, its bounds, and its place in eval.json and compare."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssl_zoo.errors import UserError
from ssl_zoo.evaluation.rank import rankme, singular_values
from ssl_zoo.evaluation.results import headline


def numpy_rankme(x: np.ndarray, eps: float = 1e-7) -> float:
    """The paper's Eq. 1 written directly from numpy's SVD."""
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 120), d=st.integers(1, 24), r=st.integers(1, 24), chunk=st.integers(1, 50),
       seed=st.integers(0, 10**6))
def test_rankme_equals_numpy_svd(n, d, r, chunk, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, min(r, d))) @ rng.normal(size=(min(r, d), d))
         * rng.uniform(0.5, 3.0, d) + rng.normal(size=d))
    x = x.astype(np.float32)
    s = singular_values(torch.from_numpy(x), chunk_rows=chunk)
    ours = rankme(torch.from_numpy(x), chunk_rows=chunk)
    ref_s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(s.numpy()[:len(ref_s)], ref_s, rtol=1e-5, atol=1e-5 * ref_s[0])
    np.testing.assert_allclose(ours, numpy_rankme(x), rtol=1e-4)
    assert 1.0 - 1e-6 <= ours <= min(n, d) * (1 + 1e-4)


def test_rankme_of_known_spectra():
    q, _ = torch.linalg.qr(torch.randn(64, 16, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(0)))
    assert rankme(q * 3.0) == pytest.approx(16.0, rel=1e-5)  # 16 equal singular values
    low = q[:, :4] @ torch.randn(4, 16, dtype=torch.float64)  # rank 4
    assert rankme(low) <= 4.0 + 1e-3
    assert rankme(torch.zeros(5, 3)) == 1.0


def test_rankme_refuses_bad_features():
    with pytest.raises(UserError, match="NaN"):
        rankme(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(UserError, match="non-empty"):
        rankme(torch.empty(0, 3))


def test_rankme_is_a_headline_number():
    assert headline({"rankme": {"rank": 12.5}})["rankme"] == 12.5
    assert headline({})["rankme"] is None
