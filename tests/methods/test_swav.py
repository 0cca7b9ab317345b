"""SwAV: Sinkhorn and the swapped-prediction loss against slow transcriptions and lightly,
queue, prototype freezing, hooks, config validation, collapse monitor, a few training steps."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from ssl_zoo.assemble import resolve
from ssl_zoo.config import from_dict
from ssl_zoo.data.views import Views
from ssl_zoo.errors import ConfigError
from ssl_zoo.method import TrainContext
from ssl_zoo.modules.prototypes import Prototypes
from ssl_zoo.train import Trainer
from ssl_zoo_methods.swav import SwAV, SwAVConfig, sinkhorn, swapped_prediction_loss

HYP = settings(max_examples=40, deadline=None)


# --------------------------------------------------------------------------------------------
# independent slow versions
# --------------------------------------------------------------------------------------------
def slow_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """The paper's pseudo-code (App. A.1, Algorithm 1) with Python floats and loops.

    Q = exp(scores / eps)^T (K x B), Q /= sum(Q); then `iterations` times: scale each row k
    (prototype) to 1/K, each column b (sample) to 1/B; return (Q / column sums)^T.
    """
    s = scores.double().tolist()
    n, k = len(s), len(s[0])
    q = [[math.exp(s[b][j] / epsilon) for b in range(n)] for j in range(k)]  # K x B
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        for j in range(k):
            u = sum(q[j])
            q[j] = [v * (1.0 / k) / u for v in q[j]]
        for b in range(n):
            col = sum(q[j][b] for j in range(k))
            for j in range(k):
                q[j][b] = q[j][b] * (1.0 / n) / col
    out = torch.zeros(n, k, dtype=torch.float64)
    for b in range(n):
        col = sum(q[j][b] for j in range(k))
        for j in range(k):
            out[b, j] = q[j][b] / col
    return out


def slow_swav_loss(scores, codes, crops_for_assign, temperature):
    """Mean over (assigned crop s, other crop t) and samples of -sum_k q log softmax, in loops
    (float64 torch scalars, so autograd gives the reference gradient too)."""
    total, pairs = 0.0, 0
    for j, s in enumerate(crops_for_assign):
        for t in range(len(scores)):
            if t == s:
                continue
            pair = 0.0
            n = scores[t].shape[0]
            for b in range(n):
                logits = [scores[t][b, i] / temperature for i in range(scores[t].shape[1])]
                log_norm = torch.log(sum(torch.exp(v) for v in logits))
                pair = pair - sum(codes[j][b, i] * (logits[i] - log_norm)
                                  for i in range(len(logits))) / n
            total = total + pair
            pairs += 1
    return total / pairs


def cosine_scores(n_crops: int, batch: int, k: int, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    protos = F.normalize(torch.randn(k, dim, generator=g), dim=1)
    return [F.normalize(torch.randn(batch, dim, generator=g), dim=1) @ protos.t()
            for _ in range(n_crops)]


score_arrays = arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(1, 12)),
                      elements=st.floats(-1, 1, allow_nan=False))


# --------------------------------------------------------------------------------------------
# sinkhorn
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("epsilon,iterations", [(0.05, 3), (0.03, 1), (0.1, 5), (0.5, 3)])
def test_sinkhorn_matches_paper_pseudocode(epsilon, iterations):
    scores = cosine_scores(1, 9, 7, seed=1)[0]
    ref = slow_sinkhorn(scores, epsilon, iterations)
    torch.testing.assert_close(sinkhorn(scores, epsilon, iterations, use_float64=True), ref,
                               rtol=1e-10, atol=1e-12)
    got = sinkhorn(scores, epsilon, iterations)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)


@HYP
@given(score_arrays, st.floats(0.01, 1.0), st.integers(1, 5))
def test_sinkhorn_rows_sum_to_one(arr, epsilon, iterations):
    q = sinkhorn(torch.from_numpy(arr), epsilon, iterations)
    assert torch.isfinite(q).all() and (q >= 0).all()
    torch.testing.assert_close(q.sum(1), torch.ones(arr.shape[0]), rtol=0, atol=1e-5)


@HYP
@given(score_arrays, st.floats(0.01, 1.0), st.floats(-50, 50),
       st.lists(st.floats(-1, 1), min_size=12, max_size=12))
def test_sinkhorn_ignores_a_constant_and_a_per_prototype_shift(arr, epsilon, const, shift):
    """Exact invariances: a constant, and a per-prototype vector (the first normalisation is
    over samples for each prototype, so a factor exp(c_k / eps) per prototype cancels)."""
    s = torch.from_numpy(arr)
    per_proto = torch.tensor(shift[:arr.shape[1]], dtype=torch.float64)
    ref = sinkhorn(s, epsilon, 3, use_float64=True)
    for shifted in (s + const, s + per_proto, s + per_proto + const):
        torch.testing.assert_close(sinkhorn(shifted, epsilon, 3, use_float64=True), ref,
                                   rtol=1e-7, atol=1e-9)
    # float32: still invariant up to rounding of the shifted logits
    torch.testing.assert_close(sinkhorn((s + per_proto).float(), epsilon, 3), ref.float(),
                               rtol=0, atol=1e-3)


def test_a_per_sample_shift_changes_few_iterations_but_not_the_limit():
    """A per-sample shift is not absorbed by 3 iterations (per-prototype comes first), only
    by the fixed point Sinkhorn converges to; so it is not a property of the 3-step codes."""
    scores = cosine_scores(1, 10, 6, seed=3)[0].double()
    per_sample = torch.linspace(-1, 1, 10, dtype=torch.float64).unsqueeze(1)
    few = (sinkhorn(scores, 0.5, 3, True), sinkhorn(scores + per_sample, 0.5, 3, True))
    assert (few[0] - few[1]).abs().max() > 1e-3
    many = (sinkhorn(scores, 0.5, 50, True), sinkhorn(scores + per_sample, 0.5, 50, True))
    torch.testing.assert_close(many[0], many[1], rtol=0, atol=1e-8)
    # and the fixed point is an equipartition: every prototype holds B / K of the codes
    torch.testing.assert_close(many[0].sum(0), torch.full((6,), 10 / 6, dtype=torch.float64))


@HYP
@given(score_arrays, st.floats(0.01, 0.05), st.sampled_from(
    [torch.float32, torch.float16, torch.bfloat16]))
def test_sinkhorn_is_finite_at_small_epsilon_and_low_precision(arr, epsilon, dtype):
    s = torch.from_numpy(arr).to(dtype)
    q = sinkhorn(s, epsilon, 3)
    assert q.dtype == torch.float32
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(1), torch.ones(arr.shape[0]), rtol=0, atol=1e-5)
    # the same numbers given in float32 give the same codes: the input dtype only rounds
    torch.testing.assert_close(q, sinkhorn(s.float(), epsilon, 3))


def test_sinkhorn_ignores_autocast():
    s = cosine_scores(1, 16, 10)[0]
    ref = sinkhorn(s, 0.05, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sinkhorn(s, 0.05, 3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


@HYP
@given(score_arrays, st.floats(0.02, 1.0), st.integers(1, 4), st.data())
def test_sinkhorn_on_valid_rows_is_sinkhorn_on_those_rows_alone(arr, epsilon, iterations, data):
    """Rows left out (queue slots without an embedding) take no mass: the other rows get the
    paper's codes of the smaller problem, the left-out rows codes of 0."""
    n = arr.shape[0]
    keep = data.draw(st.lists(st.booleans(), min_size=n, max_size=n).filter(any))
    valid = torch.tensor(keep)
    s = torch.from_numpy(arr)
    got = sinkhorn(s, epsilon, iterations, use_float64=True, valid=valid)
    ref = slow_sinkhorn(s[valid], epsilon, iterations)
    torch.testing.assert_close(got[valid], ref, rtol=1e-9, atol=1e-12)
    assert torch.equal(got[~valid], torch.zeros_like(got[~valid]))
    garbage = s.clone()
    garbage[~valid] = 1e6  # whatever the left-out rows hold
    assert torch.equal(sinkhorn(garbage, epsilon, iterations, use_float64=True, valid=valid), got)
    everything = torch.ones(n, dtype=torch.bool)
    torch.testing.assert_close(sinkhorn(s.float(), epsilon, iterations, valid=everything),
                               sinkhorn(s.float(), epsilon, iterations), rtol=0, atol=0)


def test_sinkhorn_rejects_bad_arguments():
    s = torch.zeros(3, 4)
    for kwargs in ({"epsilon": 0.0}, {"epsilon": -1.0}, {"iterations": 0}):
        with pytest.raises(ValueError):
            sinkhorn(s, **kwargs)
    with pytest.raises(ValueError):
        sinkhorn(torch.zeros(3), 0.05)


# --------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_crops,assign", [(2, (0, 1)), (4, (0, 1)), (3, (0,)), (4, (1, 3))])
def test_loss_matches_slow_loop_in_value_and_gradient(n_crops, assign):
    scores = [s.double().requires_grad_() for s in cosine_scores(n_crops, 4, 5, seed=n_crops)]
    codes = [sinkhorn(scores[c], 0.05, 3, True) for c in assign]
    loss = swapped_prediction_loss(scores, codes, assign, temperature=0.1)
    grads = torch.autograd.grad(loss, scores)
    scores2 = [s.detach().clone().requires_grad_() for s in scores]
    ref = slow_swav_loss(scores2, codes, assign, 0.1)
    # an assigned crop that no other assigned crop's codes are predicted from gets no gradient
    ref_grads = torch.autograd.grad(ref, scores2, allow_unused=True)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    for g, r, s in zip(grads, ref_grads, scores2):
        r = torch.zeros_like(s) if r is None else r
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    # float32 scores: the same up to float32 rounding
    loss32 = swapped_prediction_loss([s.float() for s in scores], [q.float() for q in codes],
                                     assign, temperature=0.1)
    assert loss32.dtype == torch.float32
    torch.testing.assert_close(loss32.double(), ref.detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n_local", [0, 6])
def test_loss_matches_lightly(n_local):
    from lightly.loss import SwaVLoss

    scores = cosine_scores(2 + n_local, 32, 20, seed=5)
    ours = swapped_prediction_loss(scores, [sinkhorn(scores[i], 0.05, 3) for i in (0, 1)],
                                   (0, 1), 0.1)
    theirs = SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)(
        scores[:2], scores[2:])
    torch.testing.assert_close(ours, theirs.reshape(()), rtol=1e-5, atol=1e-6)


def test_loss_with_queue_matches_lightly():
    """lightly appends the queue's scores after the batch, we prepend them: Sinkhorn is
    permutation-equivariant, so the batch's codes agree."""
    from lightly.loss import SwaVLoss

    scores = cosine_scores(2 + 4, 16, 20, seed=6)
    queue_scores = cosine_scores(2, 48, 20, seed=7)
    codes = [sinkhorn(torch.cat([queue_scores[i], scores[i]]), 0.05, 3)[-16:] for i in (0, 1)]
    ours = swapped_prediction_loss(scores, codes, (0, 1), 0.1)
    theirs = SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)(
        scores[:2], scores[2:], queue_outputs=queue_scores)
    torch.testing.assert_close(ours, theirs.reshape(()), rtol=1e-5, atol=1e-6)


def test_agreeing_views_have_lower_loss_than_unrelated_ones():
    g = torch.Generator().manual_seed(0)
    protos = F.normalize(torch.randn(10, 16, generator=g), dim=1)
    z = F.normalize(torch.randn(64, 16, generator=g), dim=1)
    same = [z @ protos.t()] * 4
    other = [z @ protos.t()] + [F.normalize(torch.randn(64, 16, generator=g), dim=1) @ protos.t()
                                for _ in range(3)]

    def loss(scores):
        return swapped_prediction_loss(scores, [sinkhorn(scores[0], 0.05)], (0,), 0.1)

    assert loss(same) < loss(other)


def test_loss_rejects_bad_crop_indices():
    scores = cosine_scores(2, 4, 5)
    with pytest.raises(ValueError):
        swapped_prediction_loss(scores, [scores[0]], (2,))
    with pytest.raises(ValueError):
        swapped_prediction_loss(scores, [scores[0]], (0, 1))


# --------------------------------------------------------------------------------------------
# the module
# --------------------------------------------------------------------------------------------
class TinyNet(nn.Module):
    """A few-parameter backbone that counts its forward calls and their batch sizes."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(dim)
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1)


def make_model(seed: int = 0, **overrides) -> SwAV:
    torch.manual_seed(seed)
    cfg = SwAVConfig(**{"num_prototypes": 12, "feat_dim": 8, "hidden_dim": 16,
                        "collapse_patience_iters": 0, **overrides})
    return SwAV(TinyNet(16), 16, cfg)


def make_views(batch: int = 8, n_local: int = 2, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    crops = [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(2)]
    crops += [torch.randn(batch, 3, 8, 8, generator=g) for _ in range(n_local)]
    return Views.from_crops(crops)


def codes_of(out) -> torch.Tensor:
    """(assigned crops, B, K) codes from a step's debug tensors."""
    return torch.stack([out.debug[f"codes_{j}"] for j in (0, 1)])


def sgd_step(model, opt, ctx):
    model.before_optimizer_step(ctx)
    opt.step()
    opt.zero_grad(set_to_none=True)
    model.after_optimizer_step(ctx)


def test_forward_runs_the_backbone_once_per_resolution_and_follows_the_pure_loss():
    model = make_model()
    out = model(make_views(batch=8, n_local=2))
    assert model.backbone.calls == [16, 16]  # 2 x 8 global, then 2 x 8 local crops
    scores = out.debug["scores"].chunk(4)
    ref = swapped_prediction_loss(scores, [sinkhorn(scores[i], 0.03, 3) for i in (0, 1)],
                                  (0, 1), 0.1)
    torch.testing.assert_close(out.loss, ref)
    # scores are cosines: unit embeddings against unit prototypes
    torch.testing.assert_close(out.debug["embeddings"].norm(dim=1), torch.ones(32))
    torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(12))
    assert out.debug["scores"].abs().max() <= 1 + 1e-6
    for key in ("loss_over_lnK", "ln_k", "code_entropy", "prototypes_used", "code_max"):
        assert key in out.metrics
    assert out.metrics["ln_k"] == pytest.approx(math.log(12))
    ratio = float(out.loss.detach()) / math.log(12)
    assert float(out.metrics["loss_over_lnK"]) == pytest.approx(ratio)


def test_usage_metrics_count_hard_assignments():
    model = make_model()
    out = model(make_views(batch=8))
    hard = codes_of(out).reshape(-1, 12).argmax(1)
    counts = torch.bincount(hard, minlength=12).double()
    p = counts[counts > 0] / counts.sum()
    assert int(out.metrics["prototypes_used"]) == int((counts > 0).sum())
    assert float(out.metrics["code_entropy"]) == pytest.approx(
        float(-(p * p.log()).sum() / math.log(12)), rel=1e-5)


def test_crops_for_assign_must_fit_the_views():
    model = make_model(crops_for_assign=(0, 5))
    with pytest.raises(ConfigError):
        model(make_views(n_local=2))


def test_prototypes_stay_frozen_under_sgd_weight_decay_then_learn():
    model = make_model(freeze_prototypes_iters=3)
    opt = torch.optim.SGD([p for _, p in model.trainable_parameters()], lr=0.5, momentum=0.9,
                          weight_decay=0.1)
    ctx = TrainContext()
    model.on_train_start(ctx)
    model.on_epoch_start(ctx)
    start = model.prototypes.weight.detach().clone()
    for step in range(5):
        ctx.step = step
        head_before = model.projection[0].weight.detach().clone()
        model(make_views(seed=step)).loss.backward()
        assert model.prototypes.weight.grad is not None
        model.before_optimizer_step(ctx)
        frozen = step < 3
        assert (model.prototypes.weight.grad is None) == frozen
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.after_optimizer_step(ctx)
        assert not torch.equal(model.projection[0].weight, head_before)  # the rest trains
        if frozen:
            assert torch.equal(model.prototypes.weight, start)
        torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(12))
    assert not torch.equal(model.prototypes.weight, start)
    assert int(model.iteration) == 5


def test_prototype_layer_scores_cosines():
    g = torch.Generator().manual_seed(0)
    layer = Prototypes(8, 5, generator=g)
    torch.testing.assert_close(layer.weight.norm(dim=1), torch.ones(5))
    z = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    w = layer.weight.detach()
    expected = torch.tensor([[float(torch.dot(z[i], w[j])) for j in range(5)]
                             for i in range(4)])
    torch.testing.assert_close(layer(z), expected)
    with torch.no_grad():
        layer.weight.mul_(3.0)
    layer.normalize_()
    torch.testing.assert_close(layer.weight.norm(dim=1), torch.ones(5))
    assert layer.learnable and not Prototypes(8, 5, learnable=False).learnable


def test_a_zero_gradient_would_not_freeze_under_weight_decay():
    """Why freezing sets the gradient to None rather than zero."""
    p = Prototypes(4, 3)
    before = p.weight.detach().clone()
    opt = torch.optim.SGD(p.parameters(), lr=0.5, weight_decay=0.1)
    p.weight.grad = torch.zeros_like(p.weight)
    opt.step()
    assert not torch.equal(p.weight, before)
    p.drop_grad_()
    moved = p.weight.detach().clone()
    opt.step()
    assert torch.equal(p.weight, moved)


def test_fixed_random_prototypes_never_change():
    model = make_model(learn_prototypes=False)
    names = [n for n, _ in model.trainable_parameters()]
    assert "prototypes.weight" not in names and "projection.0.weight" in names
    start = model.prototypes.weight.detach().clone()
    opt = torch.optim.Adam([p for _, p in model.trainable_parameters()], lr=1e-2)
    ctx = TrainContext()
    for step in range(3):
        ctx.step = step
        model(make_views(seed=step)).loss.backward()
        sgd_step(model, opt, ctx)
    assert torch.equal(model.prototypes.weight, start)


def test_hard_assignment_for_the_first_iterations():
    model = make_model(hard_assignment_iters=2)
    opt = torch.optim.Adam([p for _, p in model.trainable_parameters()], lr=1e-3)
    ctx = TrainContext()
    for step in range(3):
        ctx.step = step
        out = model(make_views(seed=step))
        codes = codes_of(out)
        one_hot = bool(((codes == 0) | (codes == 1)).all()) and bool((codes.sum(-1) == 1).all())
        assert one_hot == (step < 2)
        out.loss.backward()
        sgd_step(model, opt, ctx)


def test_queue_codes_equal_the_last_rows_of_sinkhorn_on_queue_and_batch():
    batch = 8
    model = make_model(queue_length=2 * batch, queue_start_epoch=0)
    ctx = TrainContext()
    model.on_epoch_start(ctx)
    for step in range(3):
        queued = [q.features.detach().clone() for q in model.queues]
        filled = int(model.queues[0].filled)
        out = model(make_views(batch=batch, seed=step))
        scores = out.debug["scores"].chunk(4)
        protos = model.prototypes.weight.detach()
        for j, crop in enumerate((0, 1)):
            if filled < 2 * batch:  # not used before the queue is full
                expected = sinkhorn(scores[crop], 0.03, 3)
            else:
                expected = sinkhorn(torch.cat([queued[j] @ protos.t(), scores[crop]]),
                                    0.03, 3)[-batch:]
            torch.testing.assert_close(out.debug[f"codes_{j}"], expected)
        assert int(model.queues[0].filled) == filled  # nothing enters before the step is done
        ctx.step = step
        model.after_optimizer_step(ctx)
        for j, crop in enumerate((0, 1)):  # this batch's embeddings entered the queue after use
            z = out.debug["embeddings"].chunk(4)[crop]
            assert any(torch.equal(z, part) for part in model.queues[j].features.split(batch))
        assert float(out.metrics["queue_in_use"]) == float(filled == 2 * batch)
        assert int(model.queues[0].filled) == min(2 * batch, (step + 1) * batch)
    assert filled == 2 * batch  # the last step did use the queue


def test_queue_fills_from_queue_start_epoch_only():
    model = make_model(queue_length=16, queue_start_epoch=1)
    ctx = TrainContext(epoch=0)
    model.on_epoch_start(ctx)
    model(make_views())
    model.after_optimizer_step(ctx)
    assert int(model.queues[0].filled) == 0
    ctx.epoch = 1
    model.on_epoch_start(ctx)
    model(make_views())
    model.after_optimizer_step(ctx)
    assert int(model.queues[0].filled) == 8
    model.eval()  # evaluation forwards leave the queue alone
    model(make_views())
    model.after_optimizer_step(ctx)
    assert int(model.queues[0].filled) == 8


def test_state_dict_carries_queue_and_counters():
    model = make_model(queue_length=16, queue_start_epoch=0)
    ctx = TrainContext()
    model.on_epoch_start(ctx)
    opt = torch.optim.Adam([p for _, p in model.trainable_parameters()], lr=1e-3)
    for step in range(3):
        ctx.step = step
        model(make_views(seed=step)).loss.backward()
        sgd_step(model, opt, ctx)
    state = model.state_dict()
    assert {"queues.0.features", "queues.0.filled", "queues.1.ptr", "iteration",
            "epoch", "prototypes.weight"} <= set(state)
    fresh = make_model(seed=123, queue_length=16, queue_start_epoch=0)
    fresh.load_state_dict(state)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    views = make_views(seed=99)
    a, b = model(views), fresh(views)
    assert torch.equal(a.loss, b.loss)
    assert torch.equal(codes_of(a), codes_of(b))
    assert float(a.metrics["queue_in_use"]) == 1.0


def test_ten_adam_steps_reduce_the_loss():
    model = make_model(seed=1, num_prototypes=10, epsilon=0.05)
    opt = torch.optim.Adam([p for _, p in model.trainable_parameters()], lr=1e-2)
    views = make_views(batch=32, seed=1)
    ctx = TrainContext()
    losses = []
    for step in range(10):
        ctx.step = step
        out = model(views)
        losses.append(float(out.loss.detach()))
        out.loss.backward()
        sgd_step(model, opt, ctx)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.05, losses


def test_forward_under_bf16_autocast():
    model = make_model()
    views = make_views()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(views)
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32
    assert codes_of(out).dtype == torch.float32
    torch.testing.assert_close(codes_of(out).sum(-1), torch.ones(2, 8))
    out.loss.backward()
    assert torch.isfinite(model.prototypes.weight.grad).all()


def test_collapse_warns_once():
    class Constant(nn.Module):  # every image the same features: full collapse
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(16))

        def forward(self, x):
            return self.w.expand(x.shape[0], 16)

    torch.manual_seed(0)
    model = SwAV(Constant(), 16, SwAVConfig(num_prototypes=12, feat_dim=8,
                                            collapse_patience_iters=3))
    ctx = TrainContext()
    model.on_train_start(ctx)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(12):  # logged every step
            out = model(make_views())
            ctx.step = step
            model.on_log(ctx, {k: float(v) for k, v in out.metrics.items()})
    assert int(out.metrics["prototypes_used"]) == 1
    swav = [w for w in caught if "collapsed" in str(w.message)]
    assert len(swav) == 1 and issubclass(swav[0].category, RuntimeWarning)


def test_cluster_assignments_are_the_best_prototype():
    model = make_model().eval()
    images = torch.randn(6, 3, 16, 16)
    got = model.cluster_assignments(images)
    assert got.shape == (6,) and got.dtype == torch.long
    z = F.normalize(model.projection(model.backbone(images)), dim=1)
    assert torch.equal(got, (z @ model.prototypes.weight.t()).argmax(1))


# --------------------------------------------------------------------------------------------
# views, config, presets
# --------------------------------------------------------------------------------------------
def test_default_views_are_multi_crop():
    spec = SwAV.default_views(SwAVConfig(), 32)
    (g, loc) = spec.groups
    assert (g.count, g.size, g.scale) == (2, 32, (0.14, 1.0))
    # at CIFAR size the local crops are there but off (the sweep's evidence); one --set away
    assert (loc.count, loc.size, loc.scale) == (0, 16, (0.05, 0.14))
    assert [g.brightness for g in spec.groups] == [0.4, 0.4]  # strength 0.5 at CIFAR size
    assert resolve({}, [], open_data=False).view_spec.num_crops == 2
    on = resolve({}, ["views.groups.1.count=4"], open_data=False).view_spec
    assert [(x.count, x.size) for x in on.groups] == [(2, 32), (4, 16)]
    mid = SwAV.default_views(SwAVConfig(), 96)
    assert [(x.count, x.size) for x in mid.groups] == [(2, 96), (4, 48)]
    big = SwAV.default_views(SwAVConfig(), 224)
    assert [(x.count, x.size) for x in big.groups] == [(2, 224), (6, 96)]
    assert [(g.brightness, g.blur_p) for g in big.groups] == [(0.8, 0.5)] * 2  # the paper's


def test_views_overrides_on_top_of_the_default_spec():
    """One home for crops: views.* on top of SwAV's default multi-crop (count 0 drops a
    group); crops_for_assign is checked against the crops there are."""
    run = resolve({}, ["views.groups.1.count=6", "views.groups.1.size=8"], open_data=False)
    assert [(g.count, g.size) for g in run.view_spec.groups] == [(2, 32), (6, 8)]
    two = resolve({}, ["views.groups.1.count=0"], open_data=False)
    assert [(g.count, g.size) for g in two.view_spec.groups] == [(2, 32)]
    with pytest.raises(ConfigError, match=r"crops_for_assign \(0, 2\).*2 crops"):
        resolve({}, ["views.groups.1.count=0", "method.crops_for_assign=[0,2]"],
                open_data=False)


def test_class_attributes_and_config_from_plain_data():
    assert SwAV.name == "swav" and SwAV.description and SwAV.Config is SwAVConfig
    cfg = from_dict(SwAVConfig, {"crops_for_assign": [0, 2], "num_prototypes": "30"})
    assert cfg.crops_for_assign == (0, 2) and cfg.num_prototypes == 30
    SwAVConfig().validate(image_size=32, batch_size=128, dataset_size=5000)


@pytest.mark.parametrize("fields,match", [
    ({"epsilon": 0.0}, "epsilon"),
    ({"temperature": -0.1}, "temperature"),
    ({"num_prototypes": 1}, "num_prototypes"),
    ({"num_prototypes": 6000}, "num_prototypes"),
    ({"sinkhorn_iterations": 0}, "sinkhorn_iterations"),
    ({"queue_length": -128}, "queue_length"),
    ({"crops_for_assign": ()}, "crops_for_assign"),
    ({"crops_for_assign": (1, 1)}, "crops_for_assign"),
    ({"freeze_prototypes_iters": -1}, "freeze_prototypes_iters"),
])
def test_validate_rejects_impossible_values(fields, match):
    with pytest.raises(ConfigError, match=match):
        SwAVConfig(**fields).validate(image_size=32, batch_size=128, dataset_size=5000)


def test_any_queue_length_is_valid_for_any_global_batch():
    """The ring buffer wraps exactly, so a run may resume with another global batch (another
    number of processes) and keep its queue."""
    for batch in (128, 64, 96, 1):
        SwAVConfig(queue_length=100, num_prototypes=30).validate(32, batch, 5000)


def test_validate_warns_when_prototypes_outnumber_sinkhorn_rows():
    with pytest.warns(UserWarning, match="queue_length >= 2872"):
        SwAVConfig(num_prototypes=3000).validate(224, 128, 1_281_167)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SwAVConfig(num_prototypes=3000, queue_length=3840).validate(224, 256, 1_281_167)


# --------------------------------------------------------------------------------------------
# through the trainer
# --------------------------------------------------------------------------------------------
QUEUE_RUN = ["--set", "method.num_prototypes=30", "--set", "method.queue_length=64",
             "--set", "method.queue_start_epoch=0",
             "--set", "method.freeze_prototypes_iters=2", "--set", "method.hard_assignment_iters=3"]


def test_trainer_runs_swav_with_queue_freeze_and_hard_codes(tmp_path):
    import json

    from ssl_zoo.cli import main

    run = tmp_path / "run"
    assert main(["train", "--method", "swav", "--dataset", "demo", "--batch-size", "32",
                 "--epochs", "1", "--no-eval", "--no-progress", "--out", str(run),
                 "--set", "train.max_steps=4", "--set", "train.log_every_iters=1",
                 *QUEUE_RUN]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["queue_in_use"] for r in records] == [0.0, 0.0, 1.0, 1.0]
    assert all(math.isfinite(r["loss"]) and "loss_over_lnK" in r for r in records)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert int(state["iteration"]) == 4 and int(state["queues.0.filled"]) == 64
    torch.testing.assert_close(state["prototypes.weight"].norm(dim=1), torch.ones(30))


def test_swav_with_queue_survives_sigkill(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "test_resume.py"
    spec = importlib.util.spec_from_file_location("ssl_zoo_test_resume", path)
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    # the queue (2 batches) is in use from the third step; a checkpoint every 4 steps
    helpers.kill_and_resume_equals_uninterrupted(
        tmp_path, "swav", ["--batch-size", "50", "--epochs", "2", "--set", "train.max_steps=16",
                           "--backbone", "convnet_w0.25", "--set", "views.groups.1.count=2",
                           *QUEUE_RUN[:2], "--set", "method.queue_length=100", *QUEUE_RUN[4:]],
        total_steps=16)


def test_frozen_prototypes_stay_bit_identical_through_fp16_grad_scaler_steps(tmp_path):
    """The trainer's AMP path (fp16 autocast, GradScaler: scale, unscale, freeze hook, step,
    update) on CPU: the first step overflows and the scaler skips it, the next two are taken,
    and the frozen prototypes do not change by a bit until freeze_prototypes_iters is over."""
    sets = ["method=swav", "dataset=demo", "backbone=convnet_w0.25", "train.batch_size=32",
            "train.epochs=1", "train.optimizer=sgd", "train.weight_decay=0.1",
            "train.warmup_epochs=0", "train.num_workers=0", "train.device=cpu",
            "eval.enabled=false", "method.num_prototypes=30", "views.groups.1.count=2",
            "method.freeze_prototypes_iters=3"]
    trainer = Trainer(resolve({}, sets), tmp_path / "run", show_progress=False)
    trainer.autocast_dtype = torch.float16
    # 2^127 x a loss near ln 30 overflows float32: the first step's gradients are inf
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127, backoff_factor=2.0 ** -112)
    method = trainer.method
    trainer.ctx.step = trainer.ctx.epoch = 0
    method.on_train_start(trainer.ctx)
    method.on_epoch_start(trainer.ctx)
    method.train()
    start = method.prototypes.weight.detach().clone()
    batches = trainer.loader.iterate()
    for step in range(4):
        images, index, _ = next(batches)
        before = [p.detach().clone() for p in method.backbone.parameters()]
        scale = trainer.scaler.get_scale()
        loss, out, _, _ = trainer._train_step(images, index)
        assert loss is not None and torch.isfinite(loss)
        moved = any(not torch.equal(a, b) for a, b in zip(before, method.backbone.parameters()))
        if step == 0:  # inf gradients: the scaler skipped the step and lowered its scale
            assert not moved and trainer.scaler.get_scale() == scale * 2.0 ** -112
        else:
            assert moved and trainer.scaler.get_scale() == scale
        if step < 3:
            assert torch.equal(method.prototypes.weight, start), step
        trainer.step += 1
    assert not torch.equal(method.prototypes.weight, start)  # unfrozen at iteration 3
    assert out.debug["scores"].dtype == torch.float32


def test_a_skipped_step_leaves_the_queue_unchanged_and_out_of_sinkhorn():
    """A step the trainer skips (non-finite loss: ctx.step_ok False) puts nothing in the queue;
    the write position still advances, so the host's counters stay device-free. The slots it
    passed during the fill still hold their initial random vectors: once the queue is in use
    they take no part in Sinkhorn (only real embeddings do)."""
    model = make_model(queue_length=16, queue_start_epoch=0)
    ctx = TrainContext()
    model.on_train_start(ctx)
    model.on_epoch_start(ctx)
    model(make_views(seed=0))
    model.after_optimizer_step(ctx)
    before = [q.features.clone() for q in model.queues]
    model(make_views(seed=1))
    ctx.step, ctx.step_ok = 1, torch.tensor(False)
    model.after_optimizer_step(ctx)
    for q, b in zip(model.queues, before):
        assert torch.equal(q.features, b)
    ctx.step, ctx.step_ok = 2, torch.tensor(True)
    out = model(make_views(seed=2))
    model.after_optimizer_step(ctx)
    z = out.debug["embeddings"].chunk(4)[0]
    # slots 0-7: the first batch, 8-15: kept through the skipped step, then the ring wraps
    assert model.queues[0].filled_count == 16 and int(model.queues[0].ptr) == 8
    assert torch.equal(model.queues[0].features[:8], z)
    assert torch.equal(model.queues[0].features[8:], before[0][8:])
    # the queue is full by its counters: the next step uses it, without the random slots 8-15
    assert model.queues[0].written.tolist() == [True] * 8 + [False] * 8
    queued = [q.features[:8].clone() for q in model.queues]
    out = model(make_views(seed=3))
    assert float(out.metrics["queue_in_use"]) == 1.0
    scores = out.debug["scores"].chunk(4)
    protos = model.prototypes.weight.detach().double()
    for j, crop in enumerate((0, 1)):
        expected = slow_sinkhorn(torch.cat([queued[j].double() @ protos.t(), scores[crop]]),
                                 0.03, 3)[-8:]
        torch.testing.assert_close(out.debug[f"codes_{j}"].double(), expected,
                                   rtol=1e-4, atol=1e-6)
        with_random = sinkhorn(torch.cat([model.queues[j].features @ protos.float().t(),
                                          scores[crop]]), 0.03, 3)[-8:]
        assert not torch.allclose(with_random.double(), expected, rtol=1e-3, atol=1e-4)


def test_prototypes_used_with_queue_counts_batch_and_real_queue_rows():
    """The count over every Sinkhorn row (batch and the queue's real embeddings), against a
    slow count of the argmaxes of the full problem's codes."""
    batch = 8
    model = make_model(queue_length=3 * batch, queue_start_epoch=0, num_prototypes=12)
    ctx = TrainContext()
    model.on_train_start(ctx)
    model.on_epoch_start(ctx)
    for step in range(4):
        ctx.step = step
        ctx.step_ok = torch.tensor(step != 1)  # one skipped step during the fill
        out = model(make_views(batch=batch, seed=step))
        queued = [(q.features.clone(), q.written.clone()) for q in model.queues]
        model.after_optimizer_step(ctx)
    assert float(out.metrics["queue_in_use"]) == 1.0
    scores = out.debug["scores"].chunk(4)
    protos = model.prototypes.weight.detach()
    picked = set()
    for j, crop in enumerate((0, 1)):
        feats, written = queued[j]
        rows = torch.cat([feats[written] @ protos.t(), scores[crop]])
        codes = slow_sinkhorn(rows, 0.03, 3)
        picked |= {int(row.argmax()) for row in codes}
    assert int(out.metrics["prototypes_used_with_queue"]) == len(picked)
    batch_only = {int(r.argmax()) for r in codes_of(out).reshape(-1, 12)}
    assert int(out.metrics["prototypes_used"]) == len(batch_only) <= len(picked)
    first = make_model(queue_length=3 * batch, queue_start_epoch=0)(make_views())
    assert int(first.metrics["prototypes_used_with_queue"]) == int(
        first.metrics["prototypes_used"])  # before the queue is used: the batch alone


def test_metrics_that_cost_time_are_computed_on_log_steps_only():
    model = make_model()
    ctx = TrainContext(log_step=False)
    model.on_train_start(ctx)
    quiet = model(make_views(), ctx)
    assert set(quiet.metrics) == {"ln_k"}
    ctx.log_step = True
    logged = model(make_views(), ctx)
    assert {"loss_over_lnK", "prototypes_used", "code_entropy", "code_max"} <= set(logged.metrics)


def test_collapse_remedies_fit_the_config():
    from ssl_zoo_methods.swav import collapse_remedies, queue_remedies

    paper = collapse_remedies(SwAVConfig(epsilon=0.05))
    assert any("method.epsilon=0.03" in r for r in paper)
    assert any("freeze_prototypes_iters" in r for r in paper)
    tuned = collapse_remedies(SwAVConfig(epsilon=0.03, freeze_prototypes_iters=300,
                                         hard_assignment_iters=10))
    assert tuned == ["a simpler problem: fewer crops or softer augmentation (views.groups.*)"]
    q = queue_remedies(SwAVConfig(queue_length=3840, queue_start_epoch=15))
    assert "now 3840" in q[0] and "now 15" in q[1]
    model = make_model(collapse_patience_iters=5, epsilon=0.05)
    assert model.monitor.remedies == collapse_remedies(model.config)
