from __future__ import annotations

import os
import pickle

import pytest
import torch

from ssl_zoo.checkpoint import (
    atomic_torch_save,
    load_latest_checkpoint,
    safe_load,
    save_checkpoint,
)
from ssl_zoo.errors import CheckpointError


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_save_rotates_and_loads(tmp_path):
    save_checkpoint({"step": 1, "w": torch.ones(2)}, tmp_path)
    save_checkpoint({"step": 2, "w": torch.zeros(2)}, tmp_path)
    state, path = load_latest_checkpoint(tmp_path)
    assert path.name == "last.pt" and state["step"] == 2
    assert safe_load(tmp_path / "checkpoints" / "prev.pt")["step"] == 1
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_arbitrary_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing"):
        safe_load(path)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        safe_load(raw)


def test_truncated_last_falls_back_to_previous(tmp_path):
    save_checkpoint({"step": 1}, tmp_path)
    save_checkpoint({"step": 2}, tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:50])
    warnings = []
    state, path = load_latest_checkpoint(tmp_path, warn=warnings.append)
    assert state["step"] == 1 and path.name == "prev.pt"
    assert "corrupt or truncated" in warnings[0]


def test_failed_write_keeps_existing_file(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    atomic_torch_save({"v": 1}, path)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(CheckpointError, match="disk full"):
        atomic_torch_save({"v": 2}, path)
    monkeypatch.undo()
    assert safe_load(path)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_nothing_to_resume(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_latest_checkpoint(tmp_path)
