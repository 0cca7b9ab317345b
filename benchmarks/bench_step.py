"""The full training step against the backbone alone on the same crops (issue #12).

For each method, three contenders run in alternating rounds in one process, on the same device,
batch and crops; each round times ``--steps`` steps after ``--warmup`` untimed ones, and the
median of the rounds is kept (``torch.cuda.synchronize()`` before every timer read on CUDA):

* **full step**: ``Trainer._train_step`` on uint8 batches taken from the trainer's own loader
  (copy to the device, views, forward, loss, backward, hooks, optimiser), exactly as ``fit``
  calls it;
* **backbone alone**: the same backbone architecture, forward of every crop group of views made
  *once beforehand* (``make_views`` with the method's view spec), a trivial loss (the mean of the
  features), backward and the same optimiser type and settings over the backbone's parameters;
* **views alone**: ``make_views`` of a uint8 batch copied to the device.

The ratio full / backbone is the share of the backbone's speed that the whole step keeps. Then
one ``torch.profiler`` run of a few steps (SwAV by default) says where the rest goes: it profiles
the same ``Trainer._train_step``, whose phases carry ``record_function`` labels while a profiler
runs (views, forward, non-finite guard, backward, hooks and schedule, optimiser; see
``ssl_zoo.steps.phase_labels``); here the backbone's forward is labelled too, by module hooks,
and SwAV's Sinkhorn by wrapping the method module's ``sinkhorn``. Every profiled op is charged to
its innermost label (ops of autograd's own threads to the phase running at the time). Shares are
of GPU kernel time on CUDA and of host CPU time on the CPU (both are kept).

PCL is timed after its warm-up epochs (clustering done, ProtoNCE on) when its clustering can run
(it needs faiss); otherwise in its warm-up phase, and the row says so.

    python benchmarks/bench_step.py --quick                    # CPU, ConvNet, demo data
    python benchmarks/bench_step.py --device cuda --backbone resnet18 --set backbone_stem=cifar \\
        --amp bf16 --tag r18
    python benchmarks/bench_step.py --device cuda --backbone resnet50 --image-size 224 \\
        --amp bf16 \\
        --method-set swav:method.num_prototypes=3000 --n-images 3072 --tag r50   # SwAV as the paper
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.autograd.profiler import record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from ssl_zoo import registry  # noqa: E402
from ssl_zoo.assemble import Run, resolve  # noqa: E402
from ssl_zoo.backbones import build_backbone  # noqa: E402
from ssl_zoo.config import TrainConfig  # noqa: E402
from ssl_zoo.data.views import ViewSpec, make_views  # noqa: E402
from ssl_zoo.optim import build_optimizer  # noqa: E402
from ssl_zoo.steps import PHASES, amp_dtype  # noqa: E402
from ssl_zoo.train import Trainer  # noqa: E402

METHODS = ("swav", "simclr", "moco", "pcl", "dino", "byol", "barlowtwins", "vicreg",
           "deepclusterv2", "selav2")
NEW_FLAGS = ("compile", "channels_last", "cudnn_benchmark", "tf32")
"""TrainConfig fields of issue #12, passed or read only where this TrainConfig has them."""

# profiler labels -> the group they are reported under
GROUPS = {"zoo:views": "views", "zoo:backbone": "backbone",
          "zoo:momentum_encoder": "momentum encoder",
          "zoo:forward": "heads/prototypes/loss", "zoo:sinkhorn": "sinkhorn",
          "zoo:nonfinite": "non-finite guard", "zoo:backward": "backward",
          "zoo:optimizer": "optimiser", "zoo:hooks": "hooks and schedule"}
assert set(PHASES) <= set(GROUPS), "a phase label of the step has no group here"


def train_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)}


def method_fields(name: str) -> set[str]:
    return set(registry.get_method(name).config_fields())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def crops_text(spec: ViewSpec) -> str:
    return " + ".join(f"{g.count}x{g.size}" for g in spec.groups)


def random_npz(folder: Path, size: int, n: int) -> Path:
    """``n`` random uint8 images of ``size`` px (content does not change the step's cost)."""
    g = np.random.default_rng(0)
    path = folder / f"random_{size}px.npz"
    np.savez(path, x_train=g.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
             y_train=g.integers(0, 10, n))
    return path


def run_config(args, method: str, dataset: str, fields: set[str],
               large: tuple[int, int] | None = None) -> Run:
    """The assembled run of ``method``; with ``large`` = (source size, crop size) the crops of
    the source's size are made ``crop size`` (SwAV at 256 px: 2x224 + 6x96)."""
    sets = [f"dataset={dataset}", f"backbone={args.backbone}",
            f"train.batch_size={args.batch_size}", f"train.device={args.device}",
            "eval.enabled=false", "train.log_every_iters=1000000"]
    if args.amp:
        sets.append(f"train.amp={args.amp}")
    if args.compile and "compile" in fields:
        sets.append("train.compile=true")
    if large:
        sets.append(f"views.groups.0.size={large[1]}")
    mine = [kv.partition(":")[2] for kv in args.method_set if kv.partition(":")[0] == method]
    return resolve({}, sets + list(args.set) + mine, method=method)


def mirror_backend_flags(t: TrainConfig) -> None:
    """cuDNN autotuning and TF32 as the run's config asks (where TrainConfig has the fields),
    so both contenders run with them wherever the Trainer sets them (``__init__`` or ``fit``)."""
    if hasattr(t, "cudnn_benchmark"):
        torch.backends.cudnn.benchmark = bool(t.cudnn_benchmark)
    if hasattr(t, "tf32"):
        torch.backends.cuda.matmul.allow_tf32 = bool(t.tf32)
        torch.backends.cudnn.allow_tf32 = bool(t.tf32)


def steady_state(tr: Trainer, method: str) -> str | None:
    """Hooks ``fit`` runs before the first step; PCL moved past its warm-up when it can be."""
    tr.method.train()
    tr.ctx.step, tr.ctx.epoch = 0, 0
    tr.method.on_train_start(tr.ctx)
    note = None
    epoch = int(getattr(tr.method.config, "warmup_epochs", 0)) if method == "pcl" else 0
    try:
        tr.epoch = tr.ctx.epoch = epoch
        tr.method.on_epoch_start(tr.ctx)
    except Exception as exc:  # PCL's clustering needs faiss
        note = (f"timed in its warm-up phase (no ProtoNCE): clustering at epoch {epoch} failed "
                f"({type(exc).__name__}: {str(exc)[:120]})")
        tr.epoch = tr.ctx.epoch = 0
        tr.method.on_epoch_start(tr.ctx)
    tr.method.train()
    return note


def batches_of(tr: Trainer, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A few uint8 batches from the trainer's loader (pinned on CUDA), reused in turn."""
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    epoch = 0
    while len(out) < n:
        tr.loader.set_epoch(epoch)
        for images, index, _ in tr.loader.iterate():
            out.append((images, index))
            if len(out) >= n:
                break
        epoch += 1
    return out


class BackboneOnly:
    """The backbone alone on fixed crops: forward per crop group, mean of features, backward,
    the trainer's optimiser type and settings over the backbone's parameters."""

    def __init__(self, tr: Trainer, images: torch.Tensor, compiled: bool):
        t = tr.cfg.train
        self.device = tr.device
        torch.manual_seed(t.seed)
        net, _ = build_backbone(tr.cfg.backbone, stem=tr.cfg.backbone_stem,
                                image_size=tr.image_size, args=tr.cfg.backbone_args)
        net.to(self.device)
        self.channels_last = bool(getattr(t, "channels_last", False)) and \
            self.device.type == "cuda"
        if self.channels_last:
            net.to(memory_format=torch.channels_last)
        self.net = torch.compile(net) if compiled else net
        self.optimizer = build_optimizer(t.optimizer, list(net.named_parameters()), tr.peak_lr,
                                         t.weight_decay, t.momentum, t.lars_eta)
        self.dtype = getattr(tr, "autocast_dtype", amp_dtype(t.amp, self.device))
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        torch.manual_seed(0)
        views = make_views(images.to(self.device), tr.view_spec)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.groups = [g.contiguous(memory_format=fmt) for g in views.groups]

    def __call__(self) -> None:
        autocast = (torch.autocast(self.device.type, dtype=self.dtype) if self.dtype
                    else contextlib.nullcontext())
        with autocast:
            loss = sum(self.net(g).float().mean() for g in self.groups)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def rounds_of(contenders: dict, batch: int, device: torch.device, rounds: int, steps: int,
              warmup: int) -> dict[str, list[float]]:
    """images/s of each contender per round; the starting contender rotates between rounds."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    sync(device)
    names = list(contenders)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                contenders[name]()
            sync(device)
            rates[name].append(steps * batch / (time.perf_counter() - start))
        print(f"    round {r + 1}: " + ", ".join(f"{n} {v[-1]:,.0f}" for n, v in rates.items())
              + " img/s", flush=True)
    return rates


# --------------------------------------------------------------------------------------------
# profile
# --------------------------------------------------------------------------------------------
def real_step(tr: Trainer, images: torch.Tensor, index: torch.Tensor) -> None:
    """The trainer's own step, as ``fit`` calls it (its phase labels on under a profiler)."""
    tr._train_step(images, index)
    tr.step += 1


@contextlib.contextmanager
def labelled(tr: Trainer):
    """Label the backbone's forward (and any momentum copy's) and the method's ``sinkhorn``."""
    handles, stack = [], []
    bb_type = type(tr.method.backbone)
    for module in tr.method.children():
        if module is tr.method.backbone or type(module) is bb_type:
            label = "zoo:backbone" if module is tr.method.backbone else "zoo:momentum_encoder"

            def pre(_m, _i, label=label):
                rf = record_function(label)
                rf.__enter__()
                stack.append(rf)

            def post(_m, _i, _o):
                stack.pop().__exit__(None, None, None)

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    module = sys.modules.get(type(tr.method).__module__)
    original = getattr(module, "sinkhorn", None)
    if callable(original):
        def sinkhorn(*a, **k):
            with record_function("zoo:sinkhorn"):
                return original(*a, **k)
        module.sinkhorn = sinkhorn
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        if callable(original):
            module.sinkhorn = original


def _device_us(e) -> float:
    v = getattr(e, "self_device_time_total", None)
    if v is None:
        v = getattr(e, "self_cuda_time_total", 0.0)
    return float(v or 0.0)


def _is_cpu(e) -> bool:
    return str(getattr(e, "device_type", "CPU")).endswith("CPU")


def charge(events) -> tuple[dict[str, list[float]], float]:
    """(label -> [host µs, device µs]) over CPU-side ops, each charged to its innermost label,
    or (another thread) to the phase running when it started; and the µs charged nowhere."""
    cpu = [e for e in events if _is_cpu(e)]
    ranges = sorted((e.time_range.start, e.time_range.end, e.name) for e in cpu
                    if e.name in PHASES)
    starts = [r[0] for r in ranges]
    out = {label: [0.0, 0.0] for label in GROUPS}
    nowhere = 0.0
    for e in cpu:
        p, label = e, None
        while p is not None:
            if p.name in GROUPS:
                label = p.name
                break
            p = p.cpu_parent
        if label is None:
            i = bisect.bisect_right(starts, e.time_range.start) - 1
            if i >= 0 and ranges[i][1] >= e.time_range.start:
                label = ranges[i][2]
        if label is None:
            nowhere += e.self_cpu_time_total
            continue
        out[label][0] += e.self_cpu_time_total
        out[label][1] += _device_us(e)
    return out, nowhere


def profile_step(tr: Trainer, batches, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    dev = tr.device
    with labelled(tr):
        for i in range(2):  # warm the labelled path
            real_step(tr, *batches[i % len(batches)])
        sync(dev)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda"
                                               else [])
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            for i in range(steps):
                real_step(tr, *batches[i % len(batches)])
            sync(dev)
            wall = time.perf_counter() - start
    charged, nowhere = charge(prof.events())
    groups: dict[str, dict[str, float]] = {}
    for label, (host, device) in charged.items():
        g = groups.setdefault(GROUPS[label], {"cpu_ms": 0.0, "device_ms": 0.0})
        g["cpu_ms"] += host / 1000 / steps
        g["device_ms"] += device / 1000 / steps
    cpu_total = sum(g["cpu_ms"] for g in groups.values()) or 1.0
    dev_total = sum(g["device_ms"] for g in groups.values())
    for g in groups.values():
        g["cpu_share"] = g["cpu_ms"] / cpu_total
        g["device_share"] = g["device_ms"] / dev_total if dev_total else None
    basis = "device" if dev.type == "cuda" and dev_total else "cpu"
    return {"method": tr.cfg.method, "steps": steps, "basis": basis,
            "wall_ms_per_step_profiled": 1000 * wall / steps,
            "unlabelled_cpu_ms_per_step": nowhere / 1000 / steps,
            "profiled": "Trainer._train_step", "groups": groups}


# --------------------------------------------------------------------------------------------
# one method
# --------------------------------------------------------------------------------------------
def bench_method(args, method: str, dataset: str, large: tuple[int, int] | None, fields,
                 tmp: Path, profile: bool) -> tuple[dict, dict | None]:
    run = run_config(args, method, dataset, fields, large)
    cfg = run.config
    dev = torch.device("cuda" if args.device.startswith("cuda") else args.device)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        mirror_backend_flags(cfg.train)
    tr = Trainer(run, tmp / method, console=None, show_progress=False)
    note = steady_state(tr, method)
    batches = batches_of(tr)
    batch = tr.cfg.train.batch_size
    crops = crops_text(tr.view_spec)
    compiled = bool(getattr(tr.cfg.train, "compile", False))
    print(f"  {method}: {crops}, batch {batch}, {tr.device}"
          + (f" ({note})" if note else ""), flush=True)
    state = {"i": 0}

    def full() -> None:
        images, index = batches[state["i"] % len(batches)]
        state["i"] += 1
        real_step(tr, images, index)

    def views_only() -> None:
        images, _ = batches[state["i"] % len(batches)]
        state["i"] += 1
        make_views(images.to(tr.device, non_blocking=True), tr.view_spec)

    contenders = {"full_step": full, "backbone_only": BackboneOnly(tr, batches[0][0], compiled),
                  "views_only": views_only}
    rates = rounds_of(contenders, batch, tr.device, args.rounds, args.steps, args.warmup)
    med = {n: statistics.median(v) for n, v in rates.items()}
    row = {"method": method, "crops": crops, "batch": batch,
           "full_step_images_per_s": med["full_step"],
           "backbone_only_images_per_s": med["backbone_only"],
           "ratio": med["full_step"] / med["backbone_only"],
           "views_images_per_s": med["views_only"], "rounds": rates, "note": note,
           "optimizer": tr.cfg.train.optimizer,
           "amp": str(getattr(tr, "autocast_dtype", None) or "float32").replace("torch.", "")}
    if tr.device.type == "cuda":
        row["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    prof = None
    if profile:
        try:
            prof = profile_step(tr, batches, args.profile_steps)
            prof["full_step_images_per_s"] = med["full_step"]
        except Exception as exc:  # a profile is a diagnosis; never lose the timings for it
            prof = {"method": method, "error": f"{type(exc).__name__}: {exc}"}
            print(f"  profile failed: {prof['error']}", flush=True)
    return row, prof


def setup_text(args, device: torch.device, stem: str, flags: dict, amp: str) -> str:
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)")
    net = args.backbone + (f" ({stem} stem)" if args.backbone.startswith("resnet") else "")
    # channels_last, cudnn_benchmark and tf32 only act on CUDA; compile anywhere
    on = [k for k in NEW_FLAGS if flags.get(k) and (device.type == "cuda" or k == "compile")]
    return (f"{where}, {net}, batch {args.batch_size}, {amp}"
            + (f", {' '.join(on)}" if on else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated names")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--backbone", default="convnet")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--npz", type=Path, default=None,
                   help="npz data (default: the embedded demo images)")
    p.add_argument("--image-size", type=int, default=0,
                   help="large input: random uint8 images of size*256/224 px, crops of the "
                        "image size made this size (224: SwAV 2x224 + 6x96)")
    p.add_argument("--n-images", type=int, default=0,
                   help="images in the random data set of --image-size (default 2 x batch, "
                        "at least 2048: PCL's 500 clusters and MoCo's queue of 1024 fit)")
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default=None)
    p.add_argument("--compile", action="store_true",
                   help="train.compile=true (where the Trainer has it) and a compiled backbone")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="more config overrides, e.g. backbone_stem=cifar")
    p.add_argument("--method-set", action="append", default=[], metavar="METHOD:KEY=VALUE",
                   help="an override for one method only, e.g. swav:method.num_prototypes=3000")
    p.add_argument("--quick", action="store_true", help="2 short rounds: a check, not a figure")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed steps per contender and round")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per contender")
    p.add_argument("--profile-method", default="swav",
                   help="method to profile ('' or --no-profile: none)")
    p.add_argument("--profile-steps", type=int, default=None)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--tag", default="", help="suffix of the result name: step_<device>_<tag>")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the JSON (default benchmarks/results)")
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible")
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.steps = args.steps or ((10 if cuda else 3) if args.quick else (30 if cuda else 10))
    args.warmup = args.warmup if args.warmup is not None else (
        (3 if cuda else 1) if args.quick else (10 if cuda else 3)) + (5 if args.compile else 0)
    args.profile_steps = args.profile_steps or (3 if args.quick else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    fields = train_fields()
    notes = []
    if args.compile and "compile" not in fields:
        notes.append("--compile asked for, but this TrainConfig has no 'compile' field: not "
                     "compiled")
        args.compile = False
    device = torch.device("cuda" if cuda else args.device)
    load_before = os.getloadavg()[0]

    rows, profile = [], None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        large = None
        if args.npz:
            dataset = f"npz:{args.npz}"
        elif args.image_size:
            src = round(args.image_size * 256 / 224)
            n = args.n_images or max(2 * args.batch_size, 2048)
            dataset = f"npz:{random_npz(tmp, src, n)}"
            large = (src, args.image_size)
        else:
            dataset = "demo"
        for method in methods:
            row, prof = bench_method(args, method, dataset, large, fields, tmp,
                                     not args.no_profile and method == args.profile_method)
            rows.append(row)
            profile = prof or profile
            print(f"  {method}: full step {row['full_step_images_per_s']:,.0f} img/s, backbone "
                  f"alone {row['backbone_only_images_per_s']:,.0f} ({row['ratio']:.2f}x), views "
                  f"{row['views_images_per_s']:,.0f}", flush=True)
        cfg = run_config(args, methods[0], dataset, fields, large).config
    flags = {k: getattr(cfg.train, k) for k in NEW_FLAGS if k in fields}
    stem = cfg.backbone_stem
    if profile and "groups" in profile:
        basis = profile["basis"]
        shares = ", ".join(f"{k} {v[f'{basis}_share']:.0%}"
                           for k, v in profile["groups"].items() if v[f"{basis}_share"])
        print(f"  profile of {profile['method']} ({basis} time): {shares}", flush=True)
    amp = rows[0]["amp"] if rows else "?"
    data = (str(args.npz) if args.npz else
            f"random {round(args.image_size * 256 / 224)}px images" if args.image_size
            else "demo (2,000 CIFAR-10 images)")
    setup = setup_text(args, device, stem, flags, amp)
    name = f"step_{device.type}" + (f"_{args.tag}" if args.tag else "")
    write_result(name, {
        "what": (f"images/s of one training step, median of {args.rounds} alternating rounds "
                 f"of {args.steps} steps after {args.warmup} warm-up steps; full step: "
                 "Trainer._train_step on loader batches; backbone alone: the same backbone on "
                 "crops made once, mean of features as loss, same optimiser; views: make_views; "
                 f"{setup}; data {data}" + ("; QUICK run, not a figure" if args.quick else "")),
        "setup": setup, "device": device.type, "backbone": args.backbone, "stem": stem,
        "batch": args.batch_size, "amp": amp, "data": data, "image_size": args.image_size,
        "compile": args.compile, "train_flags": flags,
        "backend_flags": {"cudnn_benchmark": torch.backends.cudnn.benchmark,
                          "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                          "tf32_cudnn": torch.backends.cudnn.allow_tf32},
        "rounds": args.rounds, "steps_per_round": args.steps, "warmup_steps": args.warmup,
        "quick": args.quick, "notes": notes, "overrides": args.set,
        "method_overrides": args.method_set,
        "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
        "rows": rows, "profile": profile,
    }, args.out)


if __name__ == "__main__":
    main()
