"""PCL: concentration, ProtoNCE and clustering against hand computations, faiss and resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssl_zoo.backbones import ConvNet
from ssl_zoo.data.views import Views
from ssl_zoo.errors import ConfigError
from ssl_zoo.method import TrainContext
from ssl_zoo_methods.pcl import (
    PCL,
    PCLConfig,
    candidate_prototypes,
    cluster_concentration,
    proto_nce,
    proto_nce_logits,
    scale_concentration,
)

# --------------------------------------------------------------------------------------------
# concentration (PCL Eq. 12)
# --------------------------------------------------------------------------------------------


def test_concentration_on_hand_made_clusters():
    # cluster 0: two points at distances 3 and 4 (a 3-4-5 triangle) from centroid (0, 0)
    # cluster 1: three points at distances 1, 1, 2 from centroid (10, 0)
    # cluster 2: a single point -> the largest phi of the others
    centroids = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    features = torch.tensor([[3.0, 0.0], [0.0, 4.0],
                             [11.0, 0.0], [10.0, -1.0], [8.0, 0.0],
                             [0.0, 12.0]])
    assign = torch.tensor([0, 0, 1, 1, 1, 2])
    phi = cluster_concentration(features, centroids, assign, alpha=10.0)
    phi0 = (3 + 4) / (2 * math.log(2 + 10))
    phi1 = (1 + 1 + 2) / (3 * math.log(3 + 10))
    torch.testing.assert_close(phi, torch.tensor([phi0, phi1, max(phi0, phi1)],
                                                 dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 30), k=st.integers(1, 6), alpha=st.floats(0.5, 20),
       seed=st.integers(0, 2**16))
def test_concentration_matches_loops(n, k, alpha, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    c = rng.normal(size=(k, 3))
    a = rng.integers(0, k, size=n)
    members = [[i for i in range(n) if a[i] == j] for j in range(k)]
    expected = [sum(float(np.sqrt(((x[i] - c[j]) ** 2).sum())) for i in m)
                / (len(m) * math.log(len(m) + alpha)) if len(m) > 1 else None
                for j, m in enumerate(members)]
    known = [e for e in expected if e is not None]
    fill = max(known) if known else 1.0
    expected = [fill if e is None else e for e in expected]
    got = cluster_concentration(torch.tensor(x), torch.tensor(c), torch.tensor(a), alpha)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 40), t=st.floats(0.05, 1.0), seed=st.integers(0, 2**16))
def test_scaling_matches_numpy_percentiles(k, t, seed):
    phi = np.random.default_rng(seed).gamma(2.0, 1.0, size=k) + 0.01
    expected = phi.clip(np.percentile(phi, 10), np.percentile(phi, 90))
    expected = t * expected / expected.mean()
    got = scale_concentration(torch.tensor(phi), t, (10.0, 90.0))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    assert got.mean().item() == pytest.approx(t, rel=1e-5)


def test_scaling_guards_collapsed_features():
    got = scale_concentration(torch.zeros(5, dtype=torch.float64), 0.2)
    torch.testing.assert_close(got, torch.full((5,), 0.2))


# --------------------------------------------------------------------------------------------
# ProtoNCE (PCL Eq. 11)
# --------------------------------------------------------------------------------------------
def test_proto_nce_on_hand_made_example():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    phi = torch.tensor([0.1, 0.2, 0.3, 0.4])
    positive = torch.tensor([1, 0, 1])  # clusters of the 3 samples
    candidates = torch.tensor([True, True, False, True])  # positives {0, 1}, negative 3
    cand = [0, 1, 3]
    expected = 0.0
    for i in range(3):
        s = {j: float(q[i] @ protos[j]) / float(phi[j]) for j in cand}
        expected += -(s[int(positive[i])] - math.log(sum(math.exp(v) for v in s.values())))
    expected /= 3
    got = proto_nce(q, protos, phi, positive, candidates)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    logits, target = proto_nce_logits(q, protos, phi, positive, candidates)
    assert logits.shape == (3, 4) and target.tolist() == [1, 0, 1]
    assert torch.isneginf(logits[:, 2]).all()  # cluster 2 is not a candidate


def test_proto_nce_prefers_own_prototype():
    protos = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    phi = torch.full((6,), 0.2)
    positive = torch.tensor([0, 1, 2])
    every = torch.ones(6, dtype=torch.bool)
    near = proto_nce(protos[positive] + 0.01, protos, phi, positive, every)
    far = proto_nce(-protos[positive], protos, phi, positive, every)
    assert near < far


def test_negative_sampling():
    positive = torch.tensor([1, 4, 4, 7])

    def negatives(mask):
        return set(torch.arange(10)[mask].tolist()) - {1, 4, 7}

    mask = candidate_prototypes(positive, 10, 3, torch.Generator().manual_seed(0))
    assert mask[[1, 4, 7]].all() and len(negatives(mask)) == 3  # positives + 3 negatives
    everything = candidate_prototypes(positive, 10, 100)
    assert everything.all()  # fewer free clusters than asked for: all of them
    draws = [tuple(sorted(negatives(candidate_prototypes(positive, 10, 2))))
             for _ in range(2100)]
    # uniform over the 21 pairs of the 7 free clusters (chi-square, 20 degrees of freedom)
    counts = [draws.count(pair) for pair in set(draws)]
    assert len(counts) == 21
    chi2 = sum((c - 100) ** 2 / 100 for c in counts)
    assert chi2 < 45.3  # the 0.999 quantile


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
N = 48


def _dataset(seed: int = 0) -> torch.Tensor:
    """Images of 4 well-separated kinds (constant colours plus noise)."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0], [-2.0, -2.0, -2.0]])
    x = colours[torch.arange(N) % 4][:, :, None, None].expand(N, 3, 16, 16).clone()
    return x + 0.3 * torch.randn(x.shape, generator=g)


def _eval_batches(x: torch.Tensor, batch: int = 20):
    """A shuffled pass over the data with the last batch padded by repeats (like a sharded
    loader without drop_last)."""

    def batches(batch_size=None):
        order = torch.randperm(N, generator=torch.Generator().manual_seed(5))
        order = torch.cat([order, order[: (-N) % batch]])
        for part in order.split(batch):
            yield x[part], part

    return batches


def _method(**kw) -> PCL:
    torch.manual_seed(0)
    net = ConvNet(width=0.25)
    cfg = PCLConfig(**{"queue_length": 32, "proj_dim": 16, "num_clusters": (4, 6),
                       "warmup_epochs": 1, "num_negative_prototypes": 2, "kmeans_iters": 10,
                       "kmeans_redo": 1, **kw})
    return PCL(net, net.out_dim, cfg)


def _ctx(x: torch.Tensor, epoch: int = 0) -> TrainContext:
    return TrainContext(epoch=epoch, total_steps=10, steps_per_epoch=2, dataset_size=N,
                        eval_batches=_eval_batches(x))


def _views(x: torch.Tensor, index: torch.Tensor, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    crops = [x[index] + 0.1 * torch.randn(x[index].shape, generator=g) for _ in range(2)]
    return Views.from_crops(crops, index)


def test_config_validation():
    PCLConfig().validate(32, 128, 2000)
    with pytest.raises(ConfigError, match="500 clusters is impossible for 400 images"):
        PCLConfig(queue_length=256).validate(32, 128, 400)
    with pytest.raises(ConfigError, match="at least one"):
        PCLConfig(num_clusters=()).validate(32, 128, 2000)
    with pytest.raises(ConfigError, match="percentiles"):
        PCLConfig(concentration_clip_percentiles=(90.0, 10.0)).validate(32, 128, 2000)
    with pytest.raises(ConfigError, match="queue_length"):  # MoCo's checks still apply
        PCLConfig(queue_length=2000).validate(32, 128, 2000)


def test_warmup_epochs_use_the_instance_loss_only():
    x = _dataset()
    m = _method(warmup_epochs=2)
    m.on_train_start(_ctx(x))
    m.on_epoch_start(_ctx(x, epoch=1))
    assert not m.clustered
    out = m(_views(x, torch.arange(8)))
    assert "proto_loss" not in out.metrics


def test_momentum_features_cover_the_dataset_in_index_order():
    x = _dataset()
    m = _method()
    feats = m.momentum_features(_ctx(x))
    m.eval()
    expected = m.key(x)
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-5)
    assert m.training is False  # mode restored (it was eval here)
    m.train()
    m.momentum_features(_ctx(x))
    assert m.training


def test_clustering_proto_loss_and_resume():
    x = _dataset()
    m = _method()
    ctx = _ctx(x, epoch=1)
    m.on_train_start(ctx)
    assert m.assignments.shape == (2, N)
    m.on_epoch_start(ctx)
    assert m.clustered and int(m.cluster_epoch) == 1
    for i, k in enumerate((4, 6)):
        cent, phi = m.clustering(i)
        assert cent.shape == (k, 16) and phi.shape == (k,)
        assert phi.mean().item() == pytest.approx(m.config.temperature, rel=1e-4)
        a = m.assignments[i]
        assert a.min() >= 0 and a.max() < k
        # stored assignments are the nearest stored centroids (k-means' own rule)
        feats = m.momentum_features(ctx)
        torch.testing.assert_close(torch.cdist(feats, cent).argmin(1), a)

    index = torch.tensor([3, 10, 17, 40, 5, 22, 31, 8])
    torch.manual_seed(3)
    out = m(_views(x, index))
    assert {"proto_loss", "instance_loss", "proto_top1"} <= set(out.metrics)
    torch.testing.assert_close(out.loss, out.metrics["instance_loss"] + out.metrics["proto_loss"])

    # a fresh module (no on_train_start, as the trainer loads checkpoints first) resumes exactly
    state = {k: v.clone() for k, v in m.state_dict().items()}
    fresh = _method()
    assert fresh.assignments.shape == (2, 0)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.assignments, m.assignments) and fresh.clustered
    for i in range(2):
        assert all(torch.equal(u, v) for u, v in zip(fresh.clustering(i), m.clustering(i)))
    fresh.on_train_start(ctx)  # sizes already match: nothing is reset
    assert torch.equal(fresh.assignments, m.assignments)
    torch.manual_seed(4)
    a = m(_views(x, index, seed=1)).loss
    torch.manual_seed(4)
    b = fresh(_views(x, index, seed=1)).loss
    torch.testing.assert_close(a, b)

    # nearest centroid of the first clustering, for the evaluation's cluster metrics
    # (the training steps above moved the key encoder's BN statistics, so compare with the
    # nearest centroid of today's momentum features rather than the stored assignments)
    m.eval()
    pred = m.cluster_assignments(x)
    feats = m.momentum_features(ctx)
    assert torch.equal(pred, torch.cdist(feats, m.clustering(0)[0]).argmin(1))


def _blobs(k: int = 4, per: int = 12, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, list]:
    """Unit vectors in ``k`` tight, well-separated groups, interleaved; and the group labels."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    labels = [i % k for i in range(k * per)]
    x = centres[labels] + 0.02 * torch.randn(k * per, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1), labels


def test_clustering_agrees_with_faiss_and_finds_the_groups():
    import faiss
    from sklearn.metrics import adjusted_rand_score

    feats, labels = _blobs()
    m = _method(num_clusters=(4,), kmeans_redo=5)
    m.on_train_start(_ctx(_dataset()))
    m.cluster(feats, epoch=3)
    ours = m.assignments[0].numpy()
    assert adjusted_rand_score(labels, ours) == 1.0
    km = faiss.Kmeans(feats.shape[1], 4, niter=10, seed=0, nredo=5)
    km.train(feats.numpy())
    _, ref = km.index.search(feats.numpy(), 1)
    assert adjusted_rand_score(ref[:, 0], ours) == 1.0
    # concentration from the stored centroids, by the formula, then scaled
    cent, phi = m.clustering(0)
    raw = cluster_concentration(feats, cent, m.assignments[0], m.config.concentration_alpha)
    torch.testing.assert_close(phi, scale_concentration(raw, m.config.temperature))


def test_mismatched_dataset_on_resume_is_an_error():
    x = _dataset()
    m = _method()
    m.on_train_start(_ctx(x))
    m.on_epoch_start(_ctx(x, epoch=1))
    ctx = _ctx(x)
    ctx.dataset_size = N + 1
    with pytest.raises(ConfigError, match="same dataset"):
        m.on_train_start(ctx)


def test_steps_with_prototypes_reach_every_parameter():
    x = _dataset()
    m = _method(symmetric=True, queue_length=64)
    opt = torch.optim.Adam([p for _, p in m.trainable_parameters()], lr=1e-3)
    m.on_train_start(_ctx(x))
    step = 0
    for epoch in range(3):
        ctx = _ctx(x, epoch)
        m.on_epoch_start(ctx)
        for b in range(2):
            ctx.step = step
            index = torch.arange(16) + 16 * b
            out = m(_views(x, index, seed=step))
            assert torch.isfinite(out.loss)
            opt.zero_grad()
            out.loss.backward()
            for name, p in m.trainable_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
            opt.step()
            m.after_optimizer_step(ctx)
            step += 1
    assert "proto_loss" in out.metrics and int(m.cluster_epoch) == 2


def test_each_image_is_pulled_to_the_centroid_its_index_was_assigned_to(monkeypatch):
    """Hand-made clusterings, written as {dataset index: cluster} per level: in forward, each
    query's positive logit is its own image's centroid (normalised) / that cluster's phi, at
    every level, and the ProtoNCE loss equals a loop over those hand-made assignments."""
    import ssl_zoo_methods.pcl as pcl_module

    x = _dataset()
    m = _method(num_negative_prototypes=0)  # no random negatives: the candidates are known
    m.on_train_start(_ctx(x))
    g = torch.Generator().manual_seed(11)
    hand = [{i: (7 * i + 3) % 4 for i in range(N)},  # level 0: 4 clusters
            {i: (i // 8) % 6 for i in range(N)}]  # level 1: 6 clusters
    cents, phis = [], []
    for level, k in enumerate((4, 6)):
        cent, phi = m.clustering(level)
        cent.copy_(torch.randn(k, 16, generator=g) * 3)  # not unit: forward normalises
        phi.copy_(torch.rand(k, generator=g) + 0.1)
        m.assignments[level].copy_(torch.tensor([hand[level][i] for i in range(N)]))
        cents.append(cent.clone().double())
        phis.append(phi.clone().double())
    m.cluster_epoch = 0
    m.load_state_dict(m.state_dict())  # as a checkpoint restores it (host flags from buffers)

    seen = []

    def recording(q, prototypes, concentration, positive, negatives):
        logits, target = real(q, prototypes, concentration, positive, negatives)
        seen.append((logits.detach().double(), target))
        return logits, target

    real = pcl_module.proto_nce_logits
    monkeypatch.setattr(pcl_module, "proto_nce_logits", recording)
    index = torch.tensor([29, 3, 44, 16, 8, 37, 21, 0, 12, 45])  # batch row != dataset index
    views = _views(x, index)
    with torch.no_grad():
        q = torch.nn.functional.normalize(m.query(views[0]).double(), dim=1)
    out = m(views)
    assert len(seen) == 2  # one query crop, two levels

    expected_loss = 0.0
    for level, (logits, target) in enumerate(seen):
        unit = [c / c.norm() for c in cents[level]]
        batch_clusters = sorted({hand[level][int(i)] for i in index})
        for row, image in enumerate(index.tolist()):
            own = hand[level][image]
            positive = float(q[row] @ unit[own]) / float(phis[level][own])
            assert float(logits[row, target[row]]) == pytest.approx(positive, rel=1e-5,
                                                                     abs=1e-5)
            denominator = sum(math.exp(float(q[row] @ unit[j]) / float(phis[level][j]))
                              for j in batch_clusters)
            expected_loss += -math.log(math.exp(positive) / denominator)
    expected_loss /= 2 * len(index)
    assert float(out.metrics["proto_loss"]) == pytest.approx(expected_loss, rel=1e-4)
