"""`ssl-zoo train | eval | compare | list | export | prepare`.

A user's mistake (unknown name, bad config, missing file) prints one line and exits with code 2;
an interrupted run prints how to resume it and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ssl_zoo.errors import ConfigError, UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _console():
    from ssl_zoo.report import make_console

    return make_console()


def _add_run_args(p: argparse.ArgumentParser, with_method: bool = True) -> None:
    if with_method:
        p.add_argument("--method", help="registered name, or path/to/file.py[:ClassName]")
    p.add_argument("--dataset", help="demo, npz:PATH, cifar10, cifar100, stl10, folder:PATH, "
                                     "prepared:DIR")
    p.add_argument("--backbone", help="convnet, resnet18, resnet50, or a torchvision model name")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="images per step on each process")
    p.add_argument("--config", help="YAML or JSON file with config fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any field, e.g. --set method.num_prototypes=30 "
                        "--set train.lr_per_256=1e-3 (repeatable)")
    p.add_argument("--data-root", help="where torchvision datasets live")
    p.add_argument("--download", action="store_true", default=None,
                   help="download torchvision datasets if missing")
    p.add_argument("--skip-bad-images", action="store_true", default=None,
                   help="skip unreadable images (and count them) instead of stopping")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--skip-nonfinite", type=int, metavar="N",
                   help="skip up to N steps with a non-finite loss before stopping")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssl-zoo", description="Self-supervised learning: SwAV, SimCLR, MoCo v2, PCL.")
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train a method")
    _add_run_args(tr)
    tr.add_argument("--out", help="run directory (default runs/<method>-<dataset>)")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    tr.add_argument("--nproc", type=int, default=1,
                    help="processes on this machine (launches torch.distributed.run)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = sub.add_parser("eval", help="evaluate a run or checkpoint (kNN, linear, clustering)")
    ev.add_argument("target", help="run directory or checkpoint file")
    ev.add_argument("--dataset", help="evaluate on another dataset source")
    ev.add_argument("--data-root")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="eval fields, e.g. --set eval.linear=false")

    cmp = sub.add_parser("compare", help="train and evaluate several methods on one budget")
    cmp.add_argument("--methods", required=True, help="comma-separated names")
    _add_run_args(cmp, with_method=False)
    cmp.add_argument("--out", default="runs/compare", help="comparison directory")

    sub.add_parser("list", help="registered methods, backbones and dataset sources")

    ex = sub.add_parser("export", help="write the backbone weights with torchvision key names")
    ex.add_argument("run_dir")
    ex.add_argument("--out", required=True, help="output .pt file")

    pr = sub.add_parser("prepare", help="decode an image folder once into a memory-mapped "
                                        "store (train from it with --dataset prepared:DIR)")
    pr.add_argument("source", help="folder:PATH")
    pr.add_argument("--out", required=True, help="store directory")
    pr.add_argument("--canvas", type=int, help="stored side in px (default 256): the whole "
                                               "image, stretched; crops keep its geometry")
    pr.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                    help="decoding processes")
    pr.add_argument("--skip-bad-images", action="store_true",
                    help="leave unreadable images out (and count them) instead of stopping")
    pr.add_argument("--overwrite", action="store_true", help="replace another store at --out")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


# --------------------------------------------------------------------------------------------
# config assembly
# --------------------------------------------------------------------------------------------
def _method_fields(name: str) -> set[str]:
    from ssl_zoo import registry

    return set(registry.get_method(name).config_fields())


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """The explicit command-line flags as ``--set`` assignments (flags win over --config)."""
    sets: list[str] = []
    simple = {"method": "method", "dataset": "dataset", "backbone": "backbone",
              "epochs": "train.epochs", "batch_size": "train.batch_size", "seed": "train.seed",
              "device": "train.device", "data_root": "data_root", "download": "download",
              "skip_bad_images": "skip_bad_images", "skip_nonfinite": "train.skip_nonfinite"}
    for attr, key in simple.items():
        value = getattr(args, attr, None)
        if value is not None:
            sets.append(f"{key}={json.dumps(value) if not isinstance(value, str) else value}")
    if getattr(args, "no_eval", False):
        sets.append("eval.enabled=false")
    return sets


def assemble_config(args: argparse.Namespace, base: dict[str, Any] | None = None):
    from ssl_zoo.config import build_run_config, load_config_file

    data = dict(base or {})
    if getattr(args, "config", None):
        data.update(load_config_file(args.config))
    sets = _flag_overrides(args) + list(args.set)
    return build_run_config(data, sets, _method_fields)


def _saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's config.json with fields added since it was written at their defaults, so a
    newer ssl-zoo resumes an older run (a new field's default keeps the old behaviour)."""
    from ssl_zoo.config import RunConfig, from_dict, to_dict

    return to_dict(from_dict(RunConfig, saved))


def _diff_configs(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff_configs(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k} ({va!r} -> {vb!r})")
    return out


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from ssl_zoo.config import to_dict

    if args.nproc and args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _launch_distributed(args)
    console = _console()
    if args.resume:
        run_dir = Path(args.resume)
        saved_path = run_dir / "config.json"
        if not saved_path.is_file():
            raise UserError(f"--resume {run_dir}: no config.json there; is it a run directory?")
        saved = json.loads(saved_path.read_text())
        cfg = assemble_config(args, base=saved)
        diff = _diff_configs(_saved_config(saved), to_dict(cfg))
        if diff:
            raise ConfigError(f"--resume {run_dir} was made with a different config: "
                              + ", ".join(diff))
        if args.out and Path(args.out).resolve() != run_dir.resolve():
            raise UserError("--out and --resume name different directories; use one")
    else:
        cfg = assemble_config(args)
        run_dir = Path(args.out or f"runs/{Path(cfg.method).stem}-{cfg.dataset.split(':')[0]}")
        if (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
            raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                            "or choose another --out")
    from ssl_zoo.report import print_train_summary
    from ssl_zoo.train import Trainer

    trainer = Trainer(cfg, run_dir, resume=bool(args.resume), console=console,
                      show_progress=not args.no_progress)
    if trainer.is_main:
        console.print(f"[bold]ssl-zoo[/] {cfg.method} on {cfg.dataset} "
                      f"({len(trainer.data.train)} images, {trainer.image_size}px), backbone "
                      f"{cfg.backbone}, {cfg.train.epochs} epochs x {trainer.steps_per_epoch} "
                      f"iterations, global batch {trainer.global_batch}, device {trainer.device}"
                      f" -> {run_dir}")
        skipped = int(getattr(trainer.data, "skipped", 0) or 0)
        if skipped:
            console.print(f"[yellow]skipped {skipped} unreadable or non-image file(s)[/]")
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        if trainer.is_main:
            console.print(f"\n[yellow]interrupted[/]; continue with: ssl-zoo train --resume "
                          f"{run_dir}")
        return EXIT_INTERRUPTED
    if trainer.is_main:
        print_train_summary(console, cfg, result)
    return 0


def _launch_distributed(args: argparse.Namespace) -> int:
    """Re-run this command under ``torch.distributed.run`` with ``--nproc`` processes."""
    from torch.distributed import run as torchrun

    argv = [a for a in sys.argv[1:]]
    cleaned, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    torchrun.main(["--standalone", f"--nproc-per-node={args.nproc}", "-m", "ssl_zoo", *cleaned])
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ssl_zoo import registry

    console = _console()
    for title, items in (("methods", registry.list_methods()),
                         ("backbones", registry.list_backbones()),
                         ("dataset sources", registry.list_datasets())):
        table = Table(title=title, title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("description")
        for name, desc in items.items():
            table.add_row(name, desc)
        console.print(table)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ssl_zoo.evaluation.run import evaluate_target

    evaluate_target(args.target, dataset=args.dataset, data_root=args.data_root,
                    device=args.device, sets=args.set, console=_console())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ssl_zoo.compare import run_compare

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise UserError("--methods: give at least one method name")
    run_compare(methods, args, console=_console())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ssl_zoo.export import export_backbone

    path = export_backbone(args.run_dir, args.out)
    _console().print(f"wrote {path} (and {path}.json with the architecture)")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from ssl_zoo.data.prepared import prepare

    console = _console()
    m = prepare(args.source, args.out, canvas=args.canvas, workers=args.workers,
                skip_bad_images=args.skip_bad_images, overwrite=args.overwrite,
                console=console, show_progress=not args.no_progress)
    counts = ", ".join(f"{s} {v['count'] - len(v['skipped_rows'])}"
                       for s, v in m["splits"].items())
    skipped = sum(len(v["skipped_rows"]) + v["skipped_files_at_open"]
                  for v in m["splits"].values())
    console.print(f"{m['status']}: {args.out} ({counts} images at {m['canvas']} px"
                  + (f", {skipped} unreadable skipped" if skipped else "")
                  + f"); train with --dataset prepared:{args.out}")
    return 0


COMMANDS = {"train": cmd_train, "list": cmd_list, "eval": cmd_eval, "compare": cmd_compare,
            "export": cmd_export, "prepare": cmd_prepare}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"ssl-zoo: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("ssl-zoo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
