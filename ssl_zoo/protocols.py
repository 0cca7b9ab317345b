"""``ssl-zoo eval --protocol linear-paper | semisup``: the paper's supervised protocols, trained
by the trainer (docs/design.md, "Layers": a command).

A protocol run lives in its own directory (``RUN/linear_paper/``: config.json, metrics.jsonl,
checkpoints, as a training run) and is resumed from there by running the same command again;
its result is one JSON file beside the run's ``eval.json`` (``RUN/eval_linear_paper.json``):
the test top-1 of the last epoch (what we report), and the best over the epochs (what the
official scripts print: chosen on the test split, so labelled as such), every epoch's test
top-1, and the recipe in words.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ssl_zoo import assemble, runstate, steps
from ssl_zoo.errors import UserError
from ssl_zoo.evaluation.supervised import classifier_accuracy, protocol_text
from ssl_zoo.train import Trainer

BEST_EPOCH_NOTE = ("the best test top-1 over the epochs, as the official eval_linear.py / "
                   "eval_semisup.py print it; chosen on the test split, not a held-out number")


def protocol_slug(protocol: str, dataset_suffix: str = "") -> str:
    """``linear_paper``, ``semisup``, with ``_<dataset>`` for another dataset."""
    return protocol.replace("-", "_") + dataset_suffix


class ProtocolEvaluation:
    """The trainer's evaluation callback for a protocol run: the test top-1 after every epoch
    (``periodic``, logged to metrics.jsonl) and at the end, written as ``result_path``."""

    def __init__(self, run: assemble.ProtocolRun, run_dir: Path, result_path: Path,
                 protocol: str, console=None):
        self.run, self.run_dir, self.result_path = run, Path(run_dir), Path(result_path)
        self.protocol, self.console = protocol, console

    def _accuracy(self, method, device) -> dict[str, float]:
        c = self.run.config
        return classifier_accuracy(method, self.run.data.test, self.run.image_size,
                                   self.run.view_spec, device, c.eval.batch_size,
                                   c.train.num_workers, steps.amp_dtype(c.train.amp, device))

    def periodic(self, method, device) -> dict[str, float]:
        acc = self._accuracy(method, device)
        return {"test_top1": acc["top1"], "test_top5": acc["top5"]}

    def final(self, method, device, step: int) -> dict[str, Any]:
        acc = self._accuracy(method, device)
        c = self.run.config
        epochs = [{"epoch": int(r["epoch"]), "top1": r["test_top1"], "top5": r["test_top5"]}
                  for r in _records(self.run_dir / "metrics.jsonl") if "test_top1" in r]
        last_epoch = -(-step // max(1, self._steps_per_epoch()))
        epochs = [e for e in epochs if e["epoch"] < last_epoch]
        epochs.append({"epoch": last_epoch, "top1": acc["top1"], "top5": acc["top5"]})
        best = max(epochs, key=lambda e: e["top1"])
        info = json.loads((self.run_dir / "run_info.json").read_text())
        result = {
            "protocol": self.protocol,
            "recipe": protocol_text(self.protocol, c, info["global_batch"],
                                    len(self.run.data.train)),
            "dataset": c.dataset, "backbone": c.backbone, "backbone_stem": c.backbone_stem,
            "image_size": self.run.image_size, "source": c.method_config.get("source", ""),
            "n_train": len(self.run.data.train), "n_test": acc["n"],
            "labelled_fraction": self.run.labelled_fraction,
            "epochs": c.train.epochs, "steps": step, "global_batch": info["global_batch"],
            "top1": acc["top1"], "top5": acc["top5"],
            "top1_last_epoch": acc["top1"],
            "top1_best_epoch": {"top1": best["top1"], "epoch": best["epoch"],
                                "note": BEST_EPOCH_NOTE},
            "per_epoch": epochs,
            "run_dir": str(self.run_dir),
        }
        runstate.write_json(self.result_path, result)
        return result

    def _steps_per_epoch(self) -> int:
        info = json.loads((self.run_dir / "run_info.json").read_text())
        return int(info["steps_per_epoch"])


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def run_protocol(run: assemble.ProtocolRun, protocol: str, run_dir: Path, result_path: Path, *,
                 console=None, show_progress: bool = True) -> dict[str, Any]:
    """Train ``run`` in ``run_dir`` (continuing it when it holds a checkpoint of the same
    config; a one-line error when it holds another) and return its result (also written to
    ``result_path``). A stop signal checkpoints and raises
    :class:`~ssl_zoo.preemption.RunStopped`: the same command continues it."""
    run_dir = Path(run_dir)
    resume = False
    if (run_dir / "config.json").is_file():
        diff = assemble.config_differences(assemble.saved_config(run_dir), run.summary())
        if diff:
            raise UserError(f"{run_dir} holds a {protocol} run made with another config ("
                            + ", ".join(diff[:3]) + (", ..." if len(diff) > 3 else "")
                            + "); remove that directory to start again")
        resume = runstate.has_checkpoint(run_dir)
    evaluation = ProtocolEvaluation(run, run_dir, result_path, protocol, console)
    trainer = Trainer(run, run_dir, resume=resume, console=console,
                      show_progress=show_progress, evaluation=evaluation)
    try:
        result = trainer.fit()
    finally:
        steps.shutdown_distributed()
    return result.eval or {}
