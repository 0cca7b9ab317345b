"""The per-sample memory and the dataset-wide embedding pass (ssl_zoo/modules/memory.py)."""

from __future__ import annotations

import pytest
import torch

from ssl_zoo.errors import ConfigError
from ssl_zoo.modules.memory import SampleMemory, dataset_embeddings


def test_dataset_embeddings_are_in_index_order_and_average_repeats():
    x = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    order = torch.tensor([4, 1, 0, 5, 3, 2, 4, 1])  # 4 and 1 seen twice (padding)
    batches = [(x[order[:3]], order[:3]), (x[order[3:]], order[3:])]
    got = dataset_embeddings(batches, lambda b: 2 * b, 6, 2, torch.device("cpu"))
    torch.testing.assert_close(got, 2 * x)
    with pytest.raises(RuntimeError, match="1 of 6 training images were not embedded"):
        dataset_embeddings([(x[:5], torch.arange(5))], lambda b: b, 6, 2, torch.device("cpu"))


def test_memory_writes_rows_by_index_masked_by_step_ok_and_resumes():
    m = SampleMemory(banks=2, dim=3)
    m.allocate(5)
    assert m.embeddings.shape == (2, 5, 3) and not m.filled
    m.fill(torch.ones(5, 3))
    assert m.filled and torch.equal(m.embeddings, torch.ones(2, 5, 3))
    index = torch.tensor([3, 0])
    rows = [torch.full((2, 3), 7.0), torch.full((2, 3), 9.0)]
    m.write(index, rows, valid=torch.tensor(False))
    assert torch.equal(m.embeddings, torch.ones(2, 5, 3))
    m.write(index, rows, valid=torch.tensor(True))
    expected = torch.ones(2, 5, 3)
    expected[0, [3, 0]] = 7.0
    expected[1, [3, 0]] = 9.0
    assert torch.equal(m.embeddings, expected)
    other = SampleMemory(banks=2, dim=3)  # 0 rows: takes the checkpoint's size
    other.load_state_dict(m.state_dict())
    assert other.filled and torch.equal(other.embeddings, expected)
    with pytest.raises(ConfigError, match="same dataset"):
        other.allocate(6)
    with pytest.raises(ValueError, match="banks"):
        m.write(index, rows[:1])
