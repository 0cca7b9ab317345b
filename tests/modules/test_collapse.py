"""The collapse monitor of clustering methods (ssl_zoo/modules/collapse.py), against loops and
hand-made logs."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ssl_zoo.modules.collapse import CollapseMonitor, prototype_usage

codes_arrays = arrays(np.float64, st.tuples(st.integers(1, 20), st.integers(2, 9)),
                      elements=st.floats(0, 1, allow_nan=False))


@settings(max_examples=40, deadline=None)
@given(codes_arrays)
def test_usage_counts_the_argmax_of_every_row(arr):
    codes = torch.from_numpy(arr)
    counts = [0] * arr.shape[1]
    for row in arr.tolist():
        counts[row.index(max(row))] += 1  # first maximum, as argmax
    assert prototype_usage(codes).tolist() == counts


def test_metrics_against_a_slow_computation():
    g = torch.Generator().manual_seed(0)
    k = 7
    codes = [torch.softmax(torch.randn(6, k, generator=g) * 3, dim=1) for _ in range(2)]
    loss = torch.tensor(1.5)
    mon = CollapseMonitor(k, 10, method="Test")
    got = mon.metrics(loss, codes)
    rows = torch.cat(codes).tolist()
    picks = [r.index(max(r)) for r in rows]
    used = sorted(set(picks))
    share = [picks.count(j) / len(picks) for j in used]
    entropy = -sum(p * math.log(p) for p in share) / math.log(k)
    assert float(got["loss_over_lnK"]) == pytest.approx(1.5 / math.log(k))
    assert int(got["prototypes_used"]) == len(used)
    assert float(got["code_entropy"]) == pytest.approx(entropy, rel=1e-6)
    assert float(got["code_max"]) == pytest.approx(sum(max(r) for r in rows) / len(rows),
                                                   rel=1e-6)
    assert all(isinstance(v, torch.Tensor) for v in got.values())  # stays on the device
    assert mon.possible_used == 6  # a batch of 6 can reach at most 6 of the 7 prototypes


def test_one_prototype_for_every_sample_has_zero_entropy():
    codes = torch.zeros(8, 5)
    codes[:, 2] = 1.0
    got = CollapseMonitor(5, 1, method="Test").metrics(torch.tensor(0.0), [codes])
    assert int(got["prototypes_used"]) == 1 and float(got["code_entropy"]) == 0.0


def _logs(mon: CollapseMonitor, steps, values):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step, v in zip(steps, values):
            mon.observe(step, v)
    return [w for w in caught if "collapsed" in str(w.message)]


AT_LN_K = {"loss_over_lnK": 1.001, "prototypes_used": 30.0}
LEARNING = {"loss_over_lnK": 0.8, "prototypes_used": 30.0}


def test_warns_once_when_the_loss_stays_at_ln_k_for_the_patience():
    mon = CollapseMonitor(30, 5, method="Test", advice="Try this.")
    mon.start(0)
    # logged every 2 iterations: streaks 2, 4 (no warning yet), 6 >= 5 (warning), then silence
    assert _logs(mon, [2, 4], [AT_LN_K] * 2) == []
    caught = _logs(mon, [6, 8, 10], [AT_LN_K] * 3)
    assert len(caught) == 1 and issubclass(caught[0].category, RuntimeWarning)
    text = str(caught[0].message)
    assert text.startswith("Test may have collapsed: the loss has stayed at ln K = 3.401")
    assert text.endswith("Try this.")


def test_a_learning_log_resets_the_streak():
    mon = CollapseMonitor(30, 5, method="Test")
    mon.start(100)  # a resumed run: the first streak counts from the resume step
    # streaks 4, 0, 2, 4, 0: never 5
    assert _logs(mon, [104, 106, 108, 110, 112], [AT_LN_K, LEARNING, AT_LN_K, AT_LN_K,
                                                  LEARNING]) == []
    assert _logs(mon, [114, 116], [AT_LN_K] * 2) == []  # 2, 4
    assert len(_logs(mon, [118], [AT_LN_K])) == 1  # 6


def test_usage_on_two_prototypes_warns_unless_the_batch_cannot_reach_more():
    few = {"loss_over_lnK": 0.5, "prototypes_used": 2.0}
    mon = CollapseMonitor(30, 3, method="Test")
    mon.metrics(torch.tensor(1.0), [torch.eye(30)[:16]])  # a batch of 16: could use 16
    caught = _logs(mon, [1, 2, 3], [few] * 3)
    assert len(caught) == 1 and "at most 2 prototypes" in str(caught[0].message)
    tiny = CollapseMonitor(30, 3, method="Test")
    tiny.metrics(torch.tensor(1.0), [torch.eye(30)[:4]])  # a batch of 4 reaches 4 at most
    assert _logs(tiny, [1, 2, 3, 4], [few] * 4) == []


def test_patience_zero_never_warns_and_missing_metrics_are_ignored():
    assert _logs(CollapseMonitor(30, 0, method="Test"), range(1, 50), [AT_LN_K] * 49) == []
    mon = CollapseMonitor(30, 2, method="Test")
    assert _logs(mon, range(1, 10), [{"loss": 3.4}] * 9) == []  # not a log with the monitor
    with pytest.raises(ValueError):
        CollapseMonitor(1, 2, method="Test")
