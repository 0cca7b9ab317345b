"""`ssl-zoo train | eval | compare | list | export | prepare`.

A user's mistake (unknown name, bad config, missing file) prints one line and exits with code 2;
a run stopped by a signal (SIGTERM, SIGINT, SIGUSR1) checkpoints and exits with 75 (resumable:
``--resume auto``); one interrupted at once (a second Ctrl-C) prints how to resume it and exits
with 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.table import Table
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from ssl_zoo import assemble, registry
from ssl_zoo.checkpoint import load_latest_checkpoint, safe_load
from ssl_zoo.compare import parse_seeds, plan, run_compare
from ssl_zoo.data.prepared import prepare
from ssl_zoo.errors import UserError
from ssl_zoo.evaluation.run import RunEvaluation, evaluate_backbone
from ssl_zoo.evaluation.weights import backbone_for_weights
from ssl_zoo.export import export_backbone
from ssl_zoo.preemption import EXIT_STOPPED, RunStopped
from ssl_zoo.report import make_console, print_eval, print_train_summary
from ssl_zoo.runstate import has_checkpoint
from ssl_zoo.train import Trainer, shutdown_distributed

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _console():
    return make_console()


def _add_run_args(p: argparse.ArgumentParser, with_method: bool = True) -> None:
    if with_method:
        p.add_argument("--method", help="registered name, or path/to/file.py[:ClassName]")
    p.add_argument("--dataset", help="demo, npz:PATH, cifar10, cifar100, stl10, folder:PATH, "
                                     "prepared:DIR")
    p.add_argument("--backbone", help="convnet, resnet18, resnet50, a torchvision model name, "
                   "or timm:NAME (with --set backbone_args.K=V)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="images per step on each process")
    p.add_argument("--config", action="append", default=[],
                   help="YAML or JSON file with config fields, e.g. a recipe from recipes/ "
                        "(repeatable: later files win)")
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
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and view spec, then exit (writes nothing)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssl-zoo", description="Self-supervised learning: SwAV, SimCLR, MoCo v2, PCL.")
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train a method")
    _add_run_args(tr)
    tr.add_argument("--out", help="run directory (default runs/<method>-<dataset>)")
    tr.add_argument("--resume", metavar="RUN_DIR|auto",
                    help="continue the run in RUN_DIR; auto: continue the run in --out when it "
                         "holds a checkpoint, else start it (one command for every restart)")
    tr.add_argument("--nproc", type=int, default=1,
                    help="processes on this machine (launches torch.distributed.run)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = sub.add_parser("eval", help="evaluate a run, a checkpoint or any weights file (kNN, "
                                     "feature probe, RankMe, clustering)")
    ev.add_argument("target", nargs="?", help="run directory or checkpoint file")
    ev.add_argument("--dataset", help="evaluate on another dataset source")
    ev.add_argument("--weights", help="a backbone weights file of any known layout (official "
                                      "SwAV, torchvision, lightly, solo-learn, our exports) "
                                      "instead of a run; needs --backbone and --dataset")
    ev.add_argument("--backbone", help="with --weights: the architecture, e.g. resnet50")
    ev.add_argument("--out", help="with --weights: where eval.json goes "
                                  "(default runs/eval-<weights file>-<dataset>)")
    ev.add_argument("--data-root")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="eval fields, e.g. --set eval.linear=false")

    cmp = sub.add_parser("compare", help="train and evaluate several methods on one budget")
    cmp.add_argument("--methods", required=True, help="comma-separated names")
    _add_run_args(cmp, with_method=False)
    cmp.add_argument("--out", default="runs/compare", help="comparison directory")
    cmp.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2: each method trains once "
                                     "per seed; the table shows mean ± sd")
    cmp.add_argument("--minutes", type=float, help="the same training time for every method: "
                     "epochs fixed from a short timed warm-up (replaces --epochs)")

    sub.add_parser("list", help="registered methods, backbones and dataset sources")

    ex = sub.add_parser("export", help="write the evaluated network's weights (the backbone, or "
                                       "the method's teacher) with torchvision key names")
    ex.add_argument("run_dir")
    ex.add_argument("--out", required=True, help="output .pt file")
    ex.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="eval.network=NAME: another of the method's networks")

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
# arguments -> assemble
# --------------------------------------------------------------------------------------------
def _flag_sets(args: argparse.Namespace) -> list[str]:
    """The explicit command-line flags as ``--set`` assignments (flags win over --config)."""
    sets: list[str] = []
    simple = {"dataset": "dataset", "backbone": "backbone", "epochs": "train.epochs",
              "batch_size": "train.batch_size", "seed": "train.seed", "device": "train.device",
              "data_root": "data_root", "download": "download",
              "skip_bad_images": "skip_bad_images", "skip_nonfinite": "train.skip_nonfinite"}
    for attr, key in simple.items():
        value = getattr(args, attr, None)
        if value is not None:
            sets.append(f"{key}={json.dumps(value) if not isinstance(value, str) else value}")
    if getattr(args, "no_eval", False):
        sets.append("eval.enabled=false")
    return sets + list(args.set)


def _print_resolved(console, runs: list[assemble.Run]) -> None:
    """What --dry-run shows: each run's effective config, view spec included."""
    for run in runs:
        console.print(f"[bold]{run.config.method}[/]: resolved config ({run.image_size}-px "
                      f"images, {run.view_spec.num_crops} crops per image)")
        console.print_json(json.dumps(run.summary(), sort_keys=True))


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    if args.nproc and args.nproc > 1 and "LOCAL_RANK" not in os.environ and not args.dry_run:
        return _launch_distributed(args)
    console = _console()
    sets = _flag_sets(args)
    if args.resume == "auto":
        run, run_dir, resume = _resume_auto(args, sets)
    elif args.resume:
        run_dir, resume = Path(args.resume), True
        if args.out and Path(args.out).resolve() != run_dir.resolve():
            raise UserError("--out and --resume name different directories; use one")
        if args.method or args.config:
            raise UserError("--resume continues a run as it was made; drop --method/--config")
        run = assemble.resume(run_dir, sets, open_data=None if args.dry_run else True)
    else:
        resume = False
        run = assemble.resolve(assemble.load_files(args.config), sets, method=args.method,
                               open_data=None if args.dry_run else True)
        cfg = run.config
        run_dir = Path(args.out or f"runs/{Path(cfg.method).stem}-{cfg.dataset.split(':')[0]}")
        if (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()) \
                and not args.dry_run:
            raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                            "or choose another --out")
    if args.dry_run:
        _print_resolved(console, [run])
        return 0
    cfg = run.config
    evaluation = RunEvaluation(run.data, run.view_spec, cfg, run_dir, console=console,
                               show=lambda result: print_eval(console, result))
    trainer = Trainer(run, run_dir, resume=resume, console=console,
                      show_progress=not args.no_progress, evaluation=evaluation)
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
    except RunStopped as stop:
        return _stopped(console, trainer, stop, run_dir)
    except KeyboardInterrupt:
        if trainer.is_main:
            console.print(f"\n[yellow]interrupted[/]; continue with: ssl-zoo train --resume "
                          f"{run_dir}")
        return EXIT_INTERRUPTED
    finally:
        # a rank that exits with its process group alive can abort in gloo's threads at
        # interpreter exit (seen once: SIGABRT after a finished run, torchrun reporting failure)
        shutdown_distributed()
    if trainer.is_main:
        print_train_summary(console, cfg, result)
    return 0


def _stopped(console, trainer: Trainer, stop: RunStopped, run_dir: Path) -> int:
    """A run stopped on a signal: how to continue it (every rank says where it stopped)."""
    if trainer.is_main:
        console.print(f"\n[yellow]{stop}[/]; continue with the same command and --resume auto, "
                      f"or: ssl-zoo train --resume {run_dir}")
    else:
        print(f"rank {trainer.rank}: {stop}")
    return EXIT_STOPPED


def _resume_auto(args: argparse.Namespace, sets: list[str]):
    """``--resume auto``: (run, run directory, resume?) from the full command line; the run in
    --out is continued when it holds a checkpoint, started when there is none, and refused (one
    line) when it was made with another config."""
    run = assemble.resolve(assemble.load_files(args.config), sets, method=args.method,
                           open_data=None if args.dry_run else True)
    cfg = run.config
    run_dir = Path(args.out or f"runs/{Path(cfg.method).stem}-{cfg.dataset.split(':')[0]}")
    if not (run_dir / "config.json").is_file():
        if has_checkpoint(run_dir):
            raise UserError(f"--resume auto: {run_dir} holds checkpoints but no config.json; "
                            f"continue it with --resume {run_dir}")
        return run, run_dir, False
    diff = assemble.config_differences(assemble.saved_config(run_dir), run.summary())
    if diff:
        raise UserError(f"--resume auto: {run_dir} holds another run (" + ", ".join(diff)
                        + "); give another --out, or continue it with --resume " + str(run_dir))
    return run, run_dir, has_checkpoint(run_dir)


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
    # torchrun forwards these to the ranks (and waits 30 s for them): the ranks stop cleanly
    os.environ.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")
    try:
        torchrun.main(["--standalone", f"--nproc-per-node={args.nproc}", "-m", "ssl_zoo",
                       *cleaned])
    except SignalException as exc:  # forwarded to the ranks, which checkpoint on it
        print(f"ssl-zoo: {exc.sigval.name}: the ranks checkpoint at their next log step; "
              "continue with --resume auto", file=sys.stderr)
        return EXIT_STOPPED
    except ChildFailedError as exc:  # the ranks stopped on a signal they got themselves
        if {f.exitcode for f in exc.failures.values()} == {EXIT_STOPPED}:
            return EXIT_STOPPED
        raise
    return 0


def cmd_list(args: argparse.Namespace) -> int:
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
    """``ssl-zoo eval RUN_DIR_OR_CHECKPOINT``: rebuild the method from its checkpoint and
    evaluate it (on its own data, or ``--dataset``)."""
    console = _console()
    if args.weights:
        return _eval_weights(args, console)
    if not args.target:
        raise UserError("eval: give a run directory or checkpoint, or --weights FILE "
                        "--backbone NAME --dataset D")
    if args.backbone or args.out:
        raise UserError("eval: --backbone and --out go with --weights (a run knows its backbone)")
    path = Path(args.target)
    if path.is_dir():
        state, ckpt = load_latest_checkpoint(path, warn=console.print)
        run_dir = path
    elif path.is_file():
        state, ckpt = safe_load(path), path
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    else:
        raise UserError(f"{args.target}: no such run directory or checkpoint")
    sets = list(args.set)
    if args.dataset:
        sets.append(f"dataset={args.dataset}")
    if args.data_root:
        sets.append(f"data_root={args.data_root}")
    try:
        run = assemble.from_checkpoint(state, sets)
    except UserError as exc:
        raise UserError(f"{ckpt}: {exc}") from None
    device = assemble.resolve_device(args.device)
    method = run.build_method()
    method.load_state_dict(state["model"])
    method.to(device)
    saved_dataset = json.loads(state["config"])["dataset"]
    name = "eval" if run.config.dataset == saved_dataset else (
        "eval_" + "".join(c if c.isalnum() else "_" for c in run.config.dataset))
    evaluate_backbone(method, run.data, run.view_spec, device, run.config, out_dir=run_dir,
                      checkpoint_key=f"{Path(ckpt).resolve()}@{state.get('step')}",
                      console=console, eval_name=name,
                      show=lambda result: print_eval(console, result))
    return 0


def _eval_weights(args: argparse.Namespace, console) -> int:
    """``ssl-zoo eval --weights FILE --backbone NAME --dataset D``: a file trained anywhere."""
    if args.target:
        raise UserError("eval: give either a run (RUN) or --weights FILE, not both")
    if not args.backbone or not args.dataset:
        raise UserError("eval --weights: also give --backbone NAME (e.g. resnet50) and "
                        "--dataset D")
    sets = [f"dataset={args.dataset}", f"backbone={args.backbone}", *args.set]
    if args.data_root:
        sets.append(f"data_root={args.data_root}")
    cfg, data, spec = assemble.for_weights(sets)
    cfg.method = f"weights:{Path(args.weights).name}"
    device = assemble.resolve_device(args.device)
    model = backbone_for_weights(args.weights, cfg, data.train.image_size).to(device)
    out = Path(args.out or f"runs/eval-{Path(args.weights).stem}-{cfg.dataset.split(':')[0]}")
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]ssl-zoo[/] eval {args.weights} as {cfg.backbone} "
                  f"({cfg.backbone_stem} stem) on {cfg.dataset} -> {out}")
    evaluate_backbone(model, data, spec, device, cfg, out_dir=out,
                      checkpoint_key=str(Path(args.weights).resolve()), console=console,
                      show=lambda result: print_eval(console, result))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise UserError("--methods: give at least one method name")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    if args.minutes is not None and not args.minutes > 0:
        raise UserError(f"--minutes: expected a positive number, got {args.minutes:g}")
    if args.minutes is not None and args.epochs is not None:
        raise UserError("--minutes and --epochs: give one budget, not both")
    console = _console()
    runs = plan(methods, assemble.load_files(args.config), _flag_sets(args),
                open_data=None if args.dry_run else True, seeds=seeds)
    if args.dry_run:
        _print_resolved(console, runs)
        return 0
    run_compare(runs, args.out, console, by_seed=seeds is not None, minutes=args.minutes)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    def network(state: dict) -> tuple[str, dict]:
        """The run's evaluated network (``eval.network``), its weights from the checkpoint."""
        run = assemble.from_checkpoint(state, args.set, open_data=False)
        method = run.build_method()
        method.load_state_dict(state["model"])
        name = run.config.eval.network or method.default_eval_network
        return name, method.eval_network(name).state_dict()

    path = export_backbone(args.run_dir, args.out, network)
    _console().print(f"wrote {path} (and {path}.json with the architecture)")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
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
    except RunStopped as exc:  # a compare's run stopped on a signal (train handles its own)
        print(f"ssl-zoo: {exc}; run the same command again to continue", file=sys.stderr)
        return EXIT_STOPPED
    except KeyboardInterrupt:
        print("ssl-zoo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
