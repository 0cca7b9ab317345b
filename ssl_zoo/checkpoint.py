"""Checkpoints written atomically and loaded without unpickling arbitrary objects.

Layout in ``RUN_DIR/checkpoints/``: ``last.pt`` (newest) and ``prev.pt`` (the one before). A save
writes a temporary file, fsyncs it, moves ``last.pt`` to ``prev.pt`` and renames the temporary
file into place, so at every instant at least one complete checkpoint exists. A checkpoint holds
only tensors and plain data (dicts, lists, numbers, strings) and is read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import errno
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ssl_zoo.errors import CheckpointError

FORMAT = "ssl-zoo-checkpoint-v1"
NAMES = ("last.pt", "prev.pt")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path, keep_previous: str | None = None) -> None:
    """``torch.save`` to ``path`` via temp file + fsync + rename; the old file survives failure.

    With ``keep_previous`` (a file name in the same folder), the replaced file is kept under it.
    A full disk raises CheckpointError and leaves the existing files untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(
                f"disk full while saving {path}; the previous checkpoint was kept"
            ) from None
        raise CheckpointError(f"could not write {path}: {exc.strerror or exc}") from None
    except RuntimeError as exc:  # torch wraps write errors of its zip writer
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write {path}: {exc}; the previous one was kept") from None
    except BaseException:  # interrupted (KeyboardInterrupt): the old files stay, no temp left
        tmp.unlink(missing_ok=True)
        raise
    if keep_previous and path.exists():
        os.replace(path, path.with_name(keep_previous))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def safe_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with one-line errors for unsafe or damaged files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path} holds pickled Python objects beyond tensors and plain data; refusing "
                "to load it (it could run arbitrary code)"
            ) from None
        raise CheckpointError(f"{path} is corrupt or truncated ({exc})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is corrupt or truncated ({first})") from None


def save_checkpoint(state: dict[str, Any], run_dir: str | Path) -> Path:
    """Write ``state`` as ``checkpoints/last.pt``, keeping the previous one as ``prev.pt``."""
    path = Path(run_dir) / "checkpoints" / "last.pt"
    atomic_torch_save({"format": FORMAT, **state}, path, keep_previous="prev.pt")
    return path


def load_latest_checkpoint(run_dir: str | Path, map_location="cpu", warn=print
                           ) -> tuple[dict[str, Any], Path]:
    """The newest loadable checkpoint of a run; ``prev.pt`` when ``last.pt`` is damaged."""
    folder = Path(run_dir) / "checkpoints"
    errors = []
    for name in NAMES:
        path = folder / name
        if not path.exists():
            continue
        try:
            state = safe_load(path, map_location)
        except CheckpointError as exc:
            errors.append(str(exc))
            warn(f"warning: {exc}; trying the previous checkpoint")
            continue
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            errors.append(f"{path} is not an ssl-zoo checkpoint")
            continue
        return state, path
    if errors:
        raise CheckpointError("no usable checkpoint in " + str(folder) + ": " + "; ".join(errors))
    raise CheckpointError(f"no checkpoint to resume in {folder}")
