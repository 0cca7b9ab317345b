"""Helpers of ``gpu_proof.sh``: method metadata, a carryable data subset, the training budget,
kNN without faiss, and the summary. Each is one subcommand:

    python benchmarks/_proof.py methods                      # do our methods resolve? (exit 1)
    python benchmarks/_proof.py metadata DIR                 # entry points without pip
    python benchmarks/_proof.py subset SRC DST [--n-train 10000 --n-test 5000]
    python benchmarks/_proof.py epochs CALIB_RUN SECONDS     # epochs that fit SECONDS
    python benchmarks/_proof.py knn RUN_DIR OUT.json         # kNN of a run and of random init
    python benchmarks/_proof.py summary OUTDIR               # OUTDIR/summary.json; exit 1
                                                             # when a step failed
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OURS = ("swav", "simclr", "moco", "pcl")


def cmd_methods(_args) -> int:
    """Exit 0 when every one of our methods loads through the registry, else name the failures."""
    from ssl_zoo import registry

    bad = []
    for name in OURS:
        try:
            registry.get_method(name)
        except Exception as exc:
            bad.append(f"{name}: {exc}")
    print("methods resolve: " + ("yes" if not bad else "no (" + "; ".join(bad) + ")"))
    return 1 if bad else 0


def cmd_metadata(args) -> int:
    """A minimal ``ssl_zoo-VERSION.dist-info`` with pyproject's entry points, in ``args.dir``
    (put it on PYTHONPATH): importlib.metadata then finds the ``ssl_zoo.methods`` group without
    an installation."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    info = Path(args.dir) / f"ssl_zoo-{project['version']}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                   f"Version: {project['version']}\n")
    groups = dict(project.get("entry-points", {}))
    groups["console_scripts"] = project.get("scripts", {})
    text = "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
                   for g, eps in groups.items())
    (info / "entry_points.txt").write_text(text)
    print(f"wrote {info}")
    return 0


def cmd_subset(args) -> int:
    """The first N training and M test images of an npz, small enough to carry (10,000 + 5,000
    CIFAR images: about 41 MiB)."""
    d = np.load(args.src)
    out = {"x_train": d["x_train"][:args.n_train], "y_train": d["y_train"][:args.n_train]}
    if "x_test" in d.files:
        out.update(x_test=d["x_test"][:args.n_test], y_test=d["y_test"][:args.n_test])
    if "classes" in d.files:
        out["classes"] = d["classes"]
    Path(args.dst).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.dst, **out)
    size = Path(args.dst).stat().st_size / 2**20
    print(f"wrote {args.dst}: {len(out['x_train'])} train, {len(out.get('x_test', []))} test "
          f"images, {size:.1f} MiB")
    return 0


def cmd_epochs(args) -> int:
    """Epochs of the calibration run's setup that fit ``seconds`` of training, from its
    measured images/s (its first steps include warm-up, so this errs on the short side)."""
    run = Path(args.calib_run)
    rate = json.loads((run / "train_summary.json").read_text())["images_per_s"]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
              if line.strip()]
    windows = [r["images_per_s"] for r in logged if "images_per_s" in r]
    if len(windows) > 1:  # the last logging window: past the first steps' warm-up
        rate = windows[-1]
    info = json.loads((run / "run_info.json").read_text())
    per_epoch = info["steps_per_epoch"] * info["global_batch"]
    epochs = max(1, math.floor(args.seconds * rate / per_epoch))
    print(f"calibration: {rate:,.0f} images/s, {per_epoch} images per epoch", file=sys.stderr)
    print(epochs)
    return 0


def _torch_knn(ftr, ytr, fte, yte, device) -> dict:
    """Both kNN protocols of ssl_zoo (exact cosine search by matmul + topk on ``device``, then
    ssl_zoo's own vote): what ``knn_protocols`` computes, without faiss."""
    import torch

    from ssl_zoo.evaluation.knn import KNN_PROTOCOLS, _hits, vote

    torch.backends.cuda.matmul.allow_tf32 = False  # exact float32 similarities, as faiss
    tr = torch.nn.functional.normalize(ftr.float(), dim=1).to(device)
    te = torch.nn.functional.normalize(fte.float(), dim=1).to(device)
    ytr, yte = ytr.long(), yte.long()
    classes = int(max(ytr.max(), yte.max())) + 1
    k_max = min(max(k for k, _ in KNN_PROTOCOLS.values()), len(tr))
    hits = {name: [0, 0] for name in KNN_PROTOCOLS}
    for start in range(0, len(te), 4096):
        sims, idx = (te[start:start + 4096] @ tr.T).topk(k_max, dim=1)
        sims, nlab = sims.cpu(), ytr[idx.cpu()]
        y = yte[start:start + 4096]
        for name, (k, t) in KNN_PROTOCOLS.items():
            k = min(k, k_max)
            h1, h5 = _hits(vote(sims[:, :k], nlab[:, :k], t, classes), nlab[:, :k], y)
            hits[name][0] += h1
            hits[name][1] += h5
    return {name: {"top1": h[0] / len(te), "top5": h[1] / len(te), "k": min(k, k_max),
                   "temperature": t}
            for (name, h), (k, t) in zip(hits.items(), KNN_PROTOCOLS.values())}


def cmd_knn(args) -> int:
    """kNN (both protocols) of a run's last checkpoint and of the same backbone at random
    initialisation (seeded as the evaluation's baseline), features on the GPU if there is one."""
    import torch

    from ssl_zoo.assemble import resume
    from ssl_zoo.backbones import build_backbone
    from ssl_zoo.checkpoint import load_latest_checkpoint
    from ssl_zoo.evaluation.features import extract_features

    run = Path(args.run_dir)
    assembled = resume(run)
    cfg, data, spec = assembled.config, assembled.data, assembled.view_spec
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = data.train.image_size
    method = assembled.build_method()
    state, _ = load_latest_checkpoint(run, map_location="cpu")
    method.load_state_dict(state["model"])
    torch.manual_seed(cfg.train.seed)
    random_init, _ = build_backbone(cfg.backbone, stem=cfg.backbone_stem, image_size=size)
    common = dict(image_size=size, mean=spec.mean, std=spec.std, device=device,
                  batch_size=cfg.eval.batch_size)
    out = {"protocol": "exact cosine search by torch matmul + topk (no faiss), ssl_zoo's "
                       "weighted vote; memory: the training images, queries: the test images",
           "n_train": len(data.train), "n_test": len(data.test), "steps": state["step"]}
    for name, net in (("trained", method.backbone), ("random_init", random_init)):
        start = time.perf_counter()
        net.to(device)
        ftr = extract_features(net, data.train, **common)
        fte = extract_features(net, data.test, **common)
        out[name] = _torch_knn(ftr, data.train.labels, fte, data.test.labels, device)
        out[name]["seconds"] = time.perf_counter() - start
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for name in ("trained", "random_init"):
        print(f"{name}: " + ", ".join(f"{p} top-1 {v['top1']:.3f}"
                                      for p, v in out[name].items() if isinstance(v, dict)))
    return 0


def cmd_summary(args) -> int:
    """One JSON of what the proof measured, from the files it wrote under OUTDIR."""
    out = Path(args.outdir)

    def read(path: Path):
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    status = []
    if (out / "status.jsonl").is_file():
        for line in (out / "status.jsonl").read_text().splitlines():
            try:
                status.append(json.loads(line))
            except json.JSONDecodeError:
                status.append({"unreadable": line})
    last = {r["step"]: r for r in status if "step" in r}  # a step's last word counts
    s: dict = {"outdir": str(out), "status": status,
               "failed_steps": [k for k, r in last.items() if r.get("rc") not in (0, None)],
               "skipped_steps": [k for k, r in last.items() if r.get("rc") is None]}
    views = read(out / "views.json")
    if views:
        s["views"] = [{k: r.get(k) for k in ("input", "crops", "ours_images_per_s",
                                             "ours_gpu_images_per_s", "lightly_images_per_s",
                                             "ratio", "gpu_ratio")} for r in views["rows"]]
    for p in sorted(out.glob("step_*.json")):
        r = read(p)
        if r:
            s[p.stem] = {"setup": r["setup"], "rows": [
                {k: row.get(k) for k in ("method", "crops", "full_step_images_per_s",
                                         "backbone_only_images_per_s", "ratio",
                                         "views_images_per_s", "note")} for row in r["rows"]],
                "profile_shares": {k: v.get(f"{r['profile']['basis']}_share")
                                   for k, v in (r.get("profile") or {}).get("groups", {}).items()}
                if (r.get("profile") or {}).get("groups") else None}
    run = out / "swav_run"
    train = read(run / "train_summary.json")
    if train:
        s["swav_run"] = {"train": train, "config": read(run / "config.json")}
        ev = read(run / "eval.json")
        if ev:
            s["swav_run"]["knn"] = ev.get("knn")
            s["swav_run"]["knn_random_init"] = (ev.get("random_init") or {}).get("knn")
        paper = read(run / "eval_linear_paper.json")
        if paper:
            s["swav_run"]["linear_paper"] = {k: paper.get(k) for k in (
                "recipe", "top1", "top5", "top1_best_epoch", "per_epoch", "n_train", "n_test")}
        tk = read(out / "knn_torch.json")
        if tk:
            s["swav_run"]["knn_torch"] = {"trained": tk["trained"],
                                          "random_init": tk["random_init"]}
    (out / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
    print(json.dumps(s, indent=1)[:6000])
    return 1 if s["failed_steps"] else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("methods")
    m = sub.add_parser("metadata")
    m.add_argument("dir")
    s = sub.add_parser("subset")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--n-train", type=int, default=10000)
    s.add_argument("--n-test", type=int, default=5000)
    e = sub.add_parser("epochs")
    e.add_argument("calib_run")
    e.add_argument("seconds", type=float)
    k = sub.add_parser("knn")
    k.add_argument("run_dir")
    k.add_argument("out")
    su = sub.add_parser("summary")
    su.add_argument("outdir")
    args = p.parse_args()
    return {"methods": cmd_methods, "metadata": cmd_metadata, "subset": cmd_subset,
            "epochs": cmd_epochs, "knn": cmd_knn, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
