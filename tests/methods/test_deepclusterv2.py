"""DeepCluster-v2: the loss against a float64 loop, the k-means step against scikit-learn, the
memory and the epoch-start assignment, hooks, state, config checks, a few trainer steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from ssl_zoo.backbones import ConvNet
from ssl_zoo.data.views import Views
from ssl_zoo.errors import ConfigError
from ssl_zoo.method import TrainContext
from ssl_zoo_methods.deepclusterv2 import (
    DeepClusterV2,
    DeepClusterV2Config,
    cluster_prediction_loss,
    spherical_kmeans,
)

N = 48


# --------------------------------------------------------------------------------------------
# independent slow versions
# --------------------------------------------------------------------------------------------
def slow_loss(scores, targets, temperature):
    """Mean over heads of the mean over crops and images of -log softmax at the target, with
    Python floats: crop v of image b is row v * B + b."""
    heads = []
    b = len(targets[0])
    for s, t in zip(scores, targets):
        rows = s.double().tolist()
        total = 0.0
        for r, row in enumerate(rows):
            logits = [v / temperature for v in row]
            top = max(logits)
            log_norm = top + math.log(sum(math.exp(v - top) for v in logits))
            total += log_norm - logits[int(t[r % b])]
        heads.append(total / len(rows))
    return sum(heads) / len(heads)


def separated_clusters(n_per: int, k: int, dim: int, spread: float, seed: int):
    """Unit points around k random unit centres: (points (n_per k, dim), true labels)."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(k, dim, generator=g), dim=1)
    labels = torch.arange(k).repeat_interleave(n_per)
    x = centres[labels] + spread * torch.randn(n_per * k, dim, generator=g)
    return F.normalize(x, dim=1), labels


# --------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 5), st.integers(0, 10**6),
       st.sampled_from([0.1, 0.5, 1.0]))
def test_loss_matches_float64_loop(heads, crops, batch, seed, temperature):
    g = torch.Generator().manual_seed(seed)
    ks = [int(k) for k in torch.randint(2, 7, (heads,), generator=g)]
    scores = [torch.rand(crops * batch, k, generator=g) * 2 - 1 for k in ks]
    targets = torch.stack([torch.randint(0, min(ks), (batch,), generator=g) for _ in ks])
    got = cluster_prediction_loss(scores, targets, temperature)
    assert float(got) == pytest.approx(slow_loss(scores, targets.tolist(), temperature),
                                       rel=1e-5, abs=1e-6)


def test_loss_is_lower_when_crops_agree_with_their_targets():
    targets = torch.tensor([[0, 1, 2, 1]])
    right = F.one_hot(targets[0].repeat(2), 3).float()
    assert cluster_prediction_loss([right], targets, 0.1) < \
        cluster_prediction_loss([1 - right], targets, 0.1)
    with pytest.raises(ValueError, match="heads"):
        cluster_prediction_loss([right, right], targets, 0.1)


def test_spherical_kmeans_agrees_with_scikit_learn():
    x, truth = separated_clusters(n_per=60, k=8, dim=16, spread=0.15, seed=0)
    ref = KMeans(n_clusters=8, n_init=5, random_state=0).fit(x.double().numpy())
    _, single = spherical_kmeans(x, 8, niter=20, seed=0)  # one run, as the official code
    assert normalized_mutual_info_score(ref.labels_, single.numpy()) > 0.9
    # with restarts (scikit-learn's 5 here) the same partition quality
    cents, ours = spherical_kmeans(x, 8, niter=20, seed=0, redo=3)
    assert normalized_mutual_info_score(ref.labels_, ours.numpy()) > 0.9
    assert normalized_mutual_info_score(truth.numpy(), ours.numpy()) > 0.9
    # inertia of our partition (squared distances to its clusters' means) vs scikit-learn's
    xd = x.double().numpy()
    inertia = sum(((xd[ours.numpy() == c] - xd[ours.numpy() == c].mean(0)) ** 2).sum()
                  for c in np.unique(ours.numpy()))
    assert inertia == pytest.approx(ref.inertia_, rel=0.03)
    # unit centroids, every point at its centroid of largest cosine
    torch.testing.assert_close(cents.norm(dim=1), torch.ones(8))
    assert torch.equal((x @ cents.t()).argmax(1), ours)


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
def _dataset(seed: int = 0) -> torch.Tensor:
    """Images of 4 well-separated kinds (constant colours plus noise)."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0], [-2.0, -2.0, -2.0]])
    x = colours[torch.arange(N) % 4][:, :, None, None].expand(N, 3, 16, 16).clone()
    return x + 0.3 * torch.randn(x.shape, generator=g)


def eval_batches_of(x: torch.Tensor, batch: int = 20):
    """A shuffled pass over the data, the last batch padded by repeats."""

    def batches(batch_size=None):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(5))
        order = torch.cat([order, order[: (-len(x)) % batch]])
        for part in order.split(batch):
            yield x[part], part

    return batches


def context(x: torch.Tensor, epoch: int = 0) -> TrainContext:
    return TrainContext(epoch=epoch, total_steps=10, steps_per_epoch=2, dataset_size=len(x),
                        eval_batches=eval_batches_of(x))


def crops_of(x: torch.Tensor, index: torch.Tensor, n: int = 3, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    return Views.from_crops([x[index] + 0.1 * torch.randn(x[index].shape, generator=g)
                             for _ in range(n)], index)


def build(cls=DeepClusterV2, **kw):
    torch.manual_seed(0)
    net = ConvNet(width=0.25)
    cfg = cls.Config(**{"num_prototypes": (4, 6), "feat_dim": 8, "hidden_dim": 16, **kw})
    return cls(net, net.out_dim, cfg)


def test_config_validation():
    DeepClusterV2Config().validate(32, 128, 2000)
    with pytest.raises(ConfigError, match="30 clusters is impossible for 20 images"):
        DeepClusterV2Config().validate(32, 128, 20)
    with pytest.raises(ConfigError, match="at least one head"):
        DeepClusterV2Config(num_prototypes=()).validate(32, 128, 2000)
    with pytest.raises(ConfigError, match="twice"):
        DeepClusterV2Config(crops_for_assign=(0, 0)).validate(32, 128, 2000)
    with pytest.raises(ConfigError, match="temperature"):
        DeepClusterV2Config(temperature=0).validate(32, 128, 2000)
    m = build()
    with pytest.raises(ConfigError, match="crops_for_assign"):
        m(Views.from_crops([torch.zeros(2, 3, 16, 16)], torch.arange(2)))


def test_forward_before_any_assignment_is_a_clear_error():
    m = build()
    with pytest.raises(RuntimeError, match="no cluster assignments yet"):
        m(crops_of(_dataset(), torch.arange(4)))


def test_epoch_start_fills_the_memory_and_assigns_by_spherical_kmeans():
    x = _dataset()
    m = build()
    m.on_train_start(context(x))
    assert m.memory.embeddings.shape == (2, N, 8) and not m.memory.filled
    m.on_epoch_start(context(x))
    assert m.memory.filled and m.assigned_epoch == 0
    m.eval()
    with torch.no_grad():
        expected = F.normalize(m.embed(m.backbone(x)), dim=1)
    for bank in m.memory.embeddings:  # both banks: the eval views of every image, in order
        torch.testing.assert_close(bank, expected, rtol=1e-4, atol=1e-5)
    for h, k in enumerate((4, 6)):
        protos = m.prototypes[h].weight
        assert protos.shape == (k, 8) and not protos.requires_grad
        # the centroids are the prototypes; each image sits at its nearest (cosine) centroid
        # (up to float rounding: `expected` is recomputed, and equals the memory to 1e-4, so a
        # near tie between two centroids may fall either way)
        scores = expected @ protos.t()
        assigned = scores.gather(1, m.assignments[h][:, None]).squeeze(1)
        assert (assigned >= scores.max(1).values - 1e-4).all()
        assert (scores.argmax(1) == m.assignments[h]).float().mean() > 0.9
        ref = KMeans(n_clusters=k, n_init=5, random_state=0).fit(expected.double().numpy())
        assert normalized_mutual_info_score(ref.labels_, m.assignments[h].numpy()) > 0.6


def test_the_step_writes_its_assigned_crops_into_the_memory_unless_skipped():
    x = _dataset()
    m = build()
    ctx = context(x)
    m.on_train_start(ctx)
    m.on_epoch_start(ctx)
    index = torch.tensor([5, 2, 40, 11])
    before = m.memory.embeddings.clone()
    out = m(crops_of(x, index))
    out.loss.backward()
    z = out.debug["embeddings"].chunk(3)
    ctx.step_ok = torch.tensor(False)
    m.after_optimizer_step(ctx)  # a skipped step leaves the memory as it was
    assert torch.equal(m.memory.embeddings, before)
    m(crops_of(x, index))
    ctx.step_ok = torch.tensor(True)
    m.after_optimizer_step(ctx)
    torch.testing.assert_close(m.memory.embeddings[0, index], z[0])
    torch.testing.assert_close(m.memory.embeddings[1, index], z[1])
    others = torch.ones(N, dtype=torch.bool)
    others[index] = False
    assert torch.equal(m.memory.embeddings[:, others], before[:, others])


def test_loss_uses_each_images_assignment_in_every_head_and_crop():
    x = _dataset()
    m = build()
    m.on_train_start(context(x))
    m.on_epoch_start(context(x))
    index = torch.tensor([3, 0, 17])
    views = crops_of(x, index)
    out = m(views)
    with torch.no_grad():
        z = m.embed(torch.cat(m.encode_views(views)))
        scores = [(z @ p.weight.t()).tolist() for p in m.prototypes]
    ref = slow_loss([torch.tensor(s) for s in scores], m.assignments[:, index].tolist(), 0.1)
    assert float(out.loss.detach()) == pytest.approx(ref, rel=1e-5)


def test_state_resumes_memory_assignments_and_counters():
    x = _dataset()
    m = build()
    m.on_train_start(context(x))
    m.on_epoch_start(context(x, epoch=3))
    other = build()
    other.load_state_dict(m.state_dict())
    assert other.assigned_epoch == 3 and other.memory.filled
    assert torch.equal(other.assignments, m.assignments)
    assert torch.equal(other.memory.embeddings, m.memory.embeddings)
    for a, b in zip(other.prototypes, m.prototypes):
        assert torch.equal(a.weight, b.weight)
    with pytest.raises(ConfigError, match="same dataset"):
        other.on_train_start(context(x[:40]))
