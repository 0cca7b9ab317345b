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


def test_the_collapse_warning_carries_the_diagnosis_and_the_remedies():
    mon = CollapseMonitor(30, 2, method="Test", remedies=["lower epsilon", "freeze longer"])
    logged = {"loss_over_lnK": 1.0004, "prototypes_used": 1.0, "code_entropy": 0.05,
              "prototypes_used_with_queue": 3.0}
    (caught,) = _logs(mon, [1, 2, 3], [logged] * 3)
    text = str(caught.message)
    assert "loss / ln K 1.000" in text and "3 of 30 prototypes used over batch + queue" in text
    assert "code entropy 0.05" in text
    assert "remedies that fit this run: lower epsilon; freeze longer." in text


def _queue_logs(before: float, after: float, steps_after: int, **kw):
    mon = CollapseMonitor(30, 6, method="Test", queue_remedies=["a shorter queue"], **kw)
    logs = [{"loss_over_lnK": before, "prototypes_used": 20.0, "queue_in_use": 0.0}] * 5
    logs += [{"loss_over_lnK": after, "prototypes_used": 20.0, "queue_in_use": 1.0}] * steps_after
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step, v in zip(range(2, 2 * len(logs) + 2, 2), logs):
            mon.observe(step, v)
    return mon, [w for w in caught if "queue" in str(w.message)]


def test_a_loss_the_queue_raised_is_reported_once_with_the_remedy():
    mon, queue = _queue_logs(0.8, 0.9, 3)  # 4 iterations after the queue started: too early
    assert mon.queue_loss_change is None and queue == []
    mon, queue = _queue_logs(0.8, 0.9, 8)  # logged every 2 iterations, queue from iteration 12
    assert len(queue) == 1 and "collapsed" not in str(queue[0].message)
    assert mon.queue_start_step == 12
    assert mon.queue_loss_change == pytest.approx(0.1 * math.log(30))
    text = str(queue[0].message)
    assert f"{0.1 * math.log(30):.3f} higher" in text and "a shorter queue" in text


def test_a_loss_the_queue_lowered_is_not_reported():
    mon, queue = _queue_logs(0.8, 0.7, 8)
    assert mon.queue_loss_change == pytest.approx(-0.1 * math.log(30)) and queue == []
