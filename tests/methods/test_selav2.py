"""SeLa-v2: the dataset-wide self-labelling against the float64 Sinkhorn oracle (SwAV's paper
pseudo-code in loops), equipartition, learned unit prototypes, config checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_deepclusterv2 import _dataset, build, context, crops_of
from test_swav import slow_sinkhorn

from ssl_zoo.errors import ConfigError
from ssl_zoo_methods.selav2 import SeLaV2, SeLaV2Config, equipartition_labels


@pytest.mark.parametrize("epsilon,iterations", [(0.05, 10), (0.1, 3), (0.03, 20)])
def test_labels_are_the_argmax_of_the_float64_oracle(epsilon, iterations):
    g = torch.Generator().manual_seed(1)
    protos = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    scores = F.normalize(torch.randn(40, 8, generator=g), dim=1) @ protos.t()
    ref = slow_sinkhorn(scores, epsilon, iterations).argmax(1)
    assert torch.equal(equipartition_labels(scores, epsilon, iterations, use_float64=True), ref)
    assert torch.equal(equipartition_labels(scores, epsilon, iterations), ref)


def test_equipartition_spreads_images_that_all_prefer_one_prototype():
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(120, 6, generator=g) * 0.2
    scores[:, 0] += 0.5  # every image scores prototype 0 highest
    assert torch.equal(scores.argmax(1), torch.zeros(120, dtype=torch.long))
    labels = equipartition_labels(scores, 0.05, 20)
    counts = torch.bincount(labels, minlength=6)
    assert (counts > 0).all() and counts.max() <= 40  # an equal share is 20


def test_epoch_start_labels_the_memory_as_the_oracle_does():
    x = _dataset()
    m = build(SeLaV2, sinkhorn_iterations=5)
    m.on_train_start(context(x))
    m.on_epoch_start(context(x))
    banks = m.memory.embeddings
    for h, p in enumerate(m.prototypes):
        scores = banks[h % 2].double() @ p.weight.double().t()
        ref = slow_sinkhorn(scores, 0.05, 5).argmax(1)
        assert torch.equal(m.assignments[h], ref), h


def test_prototypes_are_learned_and_kept_on_the_unit_sphere():
    x = _dataset()
    m = build(SeLaV2)
    ctx = context(x)
    m.on_train_start(ctx)
    m.on_epoch_start(ctx)
    names = [n for n, _ in m.trainable_parameters()]
    assert "prototypes.0.weight" in names and "prototypes.1.weight" in names
    before = [p.weight.detach().clone() for p in m.prototypes]
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1.0)
    m(crops_of(x, torch.arange(8))).loss.backward()
    opt.step()
    m.after_optimizer_step(ctx)
    for p, b in zip(m.prototypes, before):
        assert not torch.allclose(p.weight, b)
        torch.testing.assert_close(p.weight.norm(dim=1), torch.ones(p.weight.shape[0]))


def test_config_validation():
    SeLaV2Config().validate(32, 128, 2000)
    with pytest.raises(ConfigError, match="epsilon"):
        SeLaV2Config(epsilon=0).validate(32, 128, 2000)
    with pytest.raises(ConfigError, match="sinkhorn_iterations"):
        SeLaV2Config(sinkhorn_iterations=0).validate(32, 128, 2000)
    with pytest.raises(ConfigError, match="impossible"):  # DeepCluster-v2's checks still apply
        SeLaV2Config().validate(32, 128, 10)
