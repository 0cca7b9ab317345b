"""Regenerate the tables in benchmarks/README.md and README.md from benchmarks/results/*.json.

    python benchmarks/make_tables.py

Each table sits between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` markers; a result
file that is missing leaves its table as it is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ssl_zoo.report import fmt_spread as spread  # mean ± sd over seeds

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def f3(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def f0(v) -> str:
    return "-" if v is None else f"{v:,.0f}"


def table_views(r: dict) -> str:
    workers = r.get("lightly_workers") or 2
    gpu = any("ours_gpu_images_per_s" in row for row in r["rows"])
    lines = [f"| input | crops | ours (img/s) | lightly SwaVTransform, {workers} workers (img/s) "
             f"| ratio |{' ours on the GPU (img/s) | GPU ratio |' if gpu else ''}",
             "|---|---|---|---|---|" + ("---|---|" if gpu else "")]
    for row in r["rows"]:
        ratio = f"{row['ratio']:.1f}x" if row.get("ratio") else "-"
        line = (f"| {row['input']} | {row['crops']} | {f0(row['ours_images_per_s'])} | "
                f"{f0(row.get('lightly_images_per_s'))} | {ratio} |")
        if gpu:
            g = row.get("gpu_ratio")
            line += (f" {f0(row.get('ours_gpu_images_per_s'))} | "
                     f"{'-' if g is None else f'{g:.1f}x'} |")
        lines.append(line)
    return "\n".join(lines)


def table_folder(r: dict) -> str:
    lines = [f"| pipeline ({r['workers']} workers, {r['images']} JPEGs of 500x375, 2x224 + 6x96) "
             "| images/s | vs torchvision |", "|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['pipeline']} | {row['images_per_s']:,.1f} | "
                     f"{row['vs_torchvision']:.2f}x |")
    lines.append(f"\nStore: {r['store_mib']:.0f} MiB at canvas 256 for {r['folder_mib']:.0f} MiB "
                 f"of JPEGs; prepare took {r['prepare_s']:.1f} s.")
    if "training" in r:
        t = r["training"]
        lines.append(f"\nCPU training from the store (SwAV, 2x224 + 6x96, small ConvNet): "
                     f"crops in the step {t['views_in_step']:,.1f} img/s, in the workers "
                     f"{t['views_in_workers']:,.1f} img/s "
                     f"(**{t['views_in_workers'] / t['views_in_step']:.2f}x**).\n\n_{t['what']}_")
    return "\n".join(lines)


def table_canvas(r: dict) -> str:
    cs = [str(c) for c in r["canvases"]]
    name = {cs[0]: f"{cs[0]} (before: the eval canvas)", str(r["auto_canvas"]):
            f"{r['auto_canvas']} (canvas=auto, the default now)"}
    lines = ["| canvas (px) | global crops: source px per output px, ours / torchvision | "
             "the same, capped at 1 px per px | period-6-px grating: correlation with "
             "torchvision's crop / contrast kept | store bytes per image | decode time | crop "
             "time (2x224 + 6x96) |",
             "|---|---|---|---|---|---|---|"]
    for c in cs:
        x = r["summary"][c]
        lines.append(f"| {name.get(c, c)} | {x['global_vs_torchvision']:.2f} | "
                     f"{x['global_vs_torchvision_capped']:.2f} | {x['global_correlation']:.2f} / "
                     f"{x['global_contrast_kept']:.2f} "
                     f"| {x['store_bytes_per_image']:,.0f} | {x['decode_vs_256']:.2f}x | "
                     f"{x['crops_vs_256']:.2f}x |")
    lines += ["", "| image | crops | torchvision: source px per output px | "
              + " | ".join(f"ours at {c}: raw / capped" for c in cs) + " |",
              "|---|---|---|" + "---|" * len(cs)]
    for g in r["geometry"]:
        lines.append(f"| {g['image']} | {g['group']} | {g['torchvision_src_px_per_out_px']:.2f} | "
                     + " | ".join(f"{g[c]['vs_torchvision']:.2f} / "
                                  f"{g[c]['vs_torchvision_capped']:.2f}" for c in cs) + " |")
    return "\n".join(lines)


def table_knn(r: dict) -> str:
    lines = ["| search | time (s) | agreement with sklearn |", "|---|---|---|"]
    for row in r["rows"]:
        agree = "-" if row.get("agreement") is None else f"{row['agreement']:.4f}"
        lines.append(f"| {row['name']} | {row['time_s']:.2f} | {agree} |")
    return "\n".join(lines)


def table_swav(r: dict) -> str:
    lines = ["| variant | kNN top-1 k=20 T=0.07 | kNN top-1 k=200 T=0.1 | final loss | "
             "train images/s |", "|---|---|---|---|---|"]
    for name, row in r["rows"].items():
        lines.append(f"| {name} | {f3(row['knn']['k20_t0.07']['top1'])} | "
                     f"{f3(row['knn']['k200_t0.1']['top1'])} | {row['final_loss']:.3f} | "
                     f"{f0(row['images_per_s'])} |")
    if "speedup_vs_lightly" in r:
        lines.append(f"\nssl-zoo / lightly: **{r['speedup_vs_lightly']:.1f}x** the images/s, "
                     f"kNN top-1 (k=20) {r['knn_k20_delta_vs_lightly']:+.3f}.")
    return "\n".join(lines)


def table_compare(r: dict) -> str:
    lines = ["| method | kNN k=20 T=0.07 | kNN k=200 T=0.1 | linear | NMI | epochs run | "
             "train min | images/s (wall, periodic kNN included) |",
             "|---|---|---|---|---|---|---|---|"]
    keys = ("knn_k20", "knn_k200", "linear", "nmi")
    if r.get("random_init"):
        cells = " | ".join(spread(r["random_init"].get(k)) for k in keys)
        lines.append(f"| random init | {cells} | - | - | - |")
    for m in r["methods"]:
        s = m["stats"]
        cells = " | ".join(spread(s.get(k)) for k in keys)
        lines.append(f"| {m['method']} | {cells} | {spread(s.get('epochs'), 0)} | "
                     f"{spread(s.get('train_s'), 1, 1 / 60)} | "
                     f"{spread(s.get('images_per_s'), 0)} |")
    best = max((m for m in r["methods"] if m["method"] != "swav"),
               key=lambda m: m["stats"]["knn_k20"]["mean"], default=None)
    swav = next((m for m in r["methods"] if m["method"] == "swav"), None)
    if best and swav and r.get("random_init"):
        sw, bb = swav["stats"]["knn_k20"]["mean"], best["stats"]["knn_k20"]["mean"]
        floor = r["random_init"]["knn_k20"]["mean"]
        lines.append(f"\nSwAV kNN k=20: {100 * (sw - bb):+.1f} points against the best baseline "
                     f"({best['method']}), {100 * (sw - floor):+.1f} points above random init.")
    return "\n".join(lines)


def table_claims(r: dict) -> str:
    lines = ["| claim | variant | seeds | kNN k=20 mean ± sd (min-max) | kNN k=200 mean ± sd | "
             "difference / seed spread | holds here |", "|---|---|---|---|---|---|---|"]
    for c in r["claims"]:
        for i, v in enumerate(c["variants"]):
            k = v["knn_k20"]
            first = i == 0
            lines.append(f"| {c['claim'] if first else ''} | {v['label']} | {len(v['seeds'])} | "
                         f"{spread(k)} ({k['min']:.3f}-{k['max']:.3f}) | {spread(v['knn_k200'])} | "
                         + (f"{c['difference']:+.3f} / {c['seed_spread']:.3f} | {c['verdict']} |"
                            if first else " | |"))
    if r.get("random_init_knn_k20"):
        lines.append(f"\nRandom init at the same budget and seeds: kNN k=20 "
                     f"{spread(r['random_init_knn_k20'])}.")
    return "\n".join(lines)


def table_multicrop(r: dict) -> str:
    """The claims table, with what multi-crop costs per epoch for each method."""
    cost = ", ".join(f"{c['method']} {c['time_ratio']:.2f}x" for c in r["claims"]
                     if c.get("time_ratio"))
    return table_claims(r) + (f"\n\nTime per epoch, multi-crop / 2 crops: {cost}." if cost else "")


def table_sweep(r: dict) -> str:
    lines = ["| setting | changes | seeds | kNN k=20 mean | sd | min-max | vs base, same seeds | "
             "final loss | images/s |", "|---|---|---|---|---|---|---|---|---|"]
    per_seed = {x["cell"]: x["knn_k20_per_seed"] for x in r["rows"]}
    for x in r["rows"]:
        sd = "-" if x["knn_k20_sd"] is None else f"{x['knn_k20_sd']:.3f}"
        ref = x.get("vs_cell", "default")  # later rounds compare with the then defaults
        base = per_seed.get(ref)
        common = sorted(set(base or {}) & set(x["knn_k20_per_seed"]))
        delta = "-" if not common or x["cell"] == ref else \
            f"{sum(x['knn_k20_per_seed'][k] - base[k] for k in common) / len(common):+.3f}"
        delta += f" (vs {ref})" if ref != "default" and common else ""
        lines.append(f"| {x['cell']} | {x['changes']} | {len(x['seeds'])} | "
                     f"{x['knn_k20_mean']:.3f} | {sd} | {x['knn_k20_min']:.3f}-"
                     f"{x['knn_k20_max']:.3f} | {delta} | {x['final_loss_mean']:.2f} | "
                     f"{x['images_per_s_mean']:.0f} |")
    return "\n".join(lines)


def table_loss_scaling(r: dict) -> str:
    lines = ["| batch | SwAV loss (s) | SimCLR loss (s) | SimCLR / SwAV time | SwAV peak MiB |"
             " SimCLR peak MiB |", "|---|---|---|---|---|---|"]

    def t(x: dict) -> str:
        return f"{x['time_s']:.3f}" if "time_s" in x else x.get("error", "-")

    for row in r["rows"]:
        s, c = row["swav"], row["simclr"]
        ratio = row.get("time_ratio_simclr_over_swav")
        lines.append(f"| {row['batch']:,} | {t(s)} | {t(c)} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}x'} | "
                     f"{f0(s.get('peak_memory_mb'))} | {f0(c.get('peak_memory_mb'))} |")
    return "\n".join(lines)


def table_ddp(r: dict) -> str:
    lines = ["| processes | threads each | global batch | train images/s |", "|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['processes']} | {row['threads_per_process']} | "
                     f"{row['global_batch']} | {f0(row['images_per_s'])} |")
    return "\n".join(lines)


def table_step(r: dict) -> str:
    """Rows of every step_*.json (one per setup), then the profile shares of each setup."""
    lines = ["| setup | method | crops | full step (img/s) | backbone alone (img/s) | ratio | "
             "views alone (img/s) |", "|---|---|---|---|---|---|---|"]
    profiles = []
    for run in r["runs"]:
        for row in run["rows"]:
            lines.append(f"| {run['setup']} | {row['method']} | {row['crops']} | "
                         f"{f0(row['full_step_images_per_s'])} | "
                         f"{f0(row['backbone_only_images_per_s'])} | {row['ratio']:.2f}x | "
                         f"{f0(row['views_images_per_s'])} |")
        prof = run.get("profile") or {}
        if prof.get("groups"):
            profiles.append((run["setup"], prof))
    notes = [f"{run['setup']}, {row['method']}: {row['note']}" for run in r["runs"]
             for row in run["rows"] if row.get("note")]
    if notes:
        lines.append("\n" + "  \n".join(f"_{n}_" for n in notes))
    if profiles:
        names = [k for k in ("views", "backbone", "momentum encoder", "heads/prototypes/loss",
                             "sinkhorn", "non-finite guard", "backward", "optimiser",
                             "hooks and schedule")
                 if any(p["groups"].get(k, {}).get(f"{p['basis']}_share") for _, p in profiles)]
        lines += ["", "Where the step's time goes (torch.profiler, share of GPU kernel time on "
                  "CUDA, of host CPU time on the CPU):", "",
                  "| setup | method | time | " + " | ".join(names) + " |",
                  "|---|---|---|" + "---|" * len(names)]
        for setup, p in profiles:
            basis = p["basis"]
            cells = [f"{p['groups'].get(k, {}).get(f'{basis}_share') or 0:.0%}" for k in names]
            lines.append(f"| {setup} | {p['method']} | {'GPU' if basis == 'device' else 'CPU'} "
                         f"| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_step() -> dict | None:
    """Every step_*.json as one result: its runs in name order, the newest one's machine."""
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("step_*.json"))]
    if not runs:
        return None
    newest = max(runs, key=lambda x: x["machine"]["date"])
    return {"runs": runs, "machine": newest["machine"],
            "what": "; ".join(dict.fromkeys(
                f"{x['setup']}: median of {x['rounds']} alternating rounds of "
                f"{x['steps_per_round']} steps after {x['warmup_steps']} warm-up steps, "
                f"data {x['data']}" for x in runs)) + ". Full step: Trainer._train_step on "
            "loader batches; backbone alone: the same backbone on crops made once, mean of its "
            "features as loss, same optimiser; views alone: make_views"}


def table_eval_scale(r: dict) -> str:
    lines = ["| N | D | classes | epochs | seconds (shared machine) | peak RSS (MiB) | features "
             "(MiB) | bound: features + 1.5 GiB (MiB) | within | test top-1 (synthetic) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['n']:,} | {x['dim']} | {x['classes']} | {x['epochs']} | "
                     f"{x['seconds']:.0f} | {f0(x['peak_rss_mib'])} | {f0(x['features_mib'])} | "
                     f"{f0(x['bound_mib'])} | {'yes' if x['within_bound'] else 'NO'} | "
                     f"{f3(x['test_top1'])} |")
    line = r["rss_line"]
    lines.append("")
    lines.append(f"Peak RSS against N, least squares: {line['mib_per_million_rows']:,.0f} MiB per "
                 f"million rows (the float32 features alone are "
                 f"{r['bytes_per_row_features'] * 1e6 / 2**20:,.0f}) + "
                 f"{line['intercept_mib']:,.0f} MiB (torch itself, before the probe: "
                 f"{r['rows'][0]['rss_before_probe_mib']:,.0f}); largest residual "
                 f"{line['max_abs_residual_mib']:,.0f} MiB.")
    return "\n".join(lines)


def table_clustering_demo(r: dict) -> str:
    lines = ["| method | crops | epochs | kNN k=20 T=0.07 | kNN k=200 T=0.1 | linear | NMI "
             "| train min |", "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        t, crops = row["trained"], " + ".join(f"{n}x{s}" for n, s in row["crops"] if n)
        lines.append(f"| {row['name']} | {crops} | {row['epochs']} | {f3(t['knn_k20'])} "
                     f"| {f3(t['knn_k200'])} | {f3(t['linear'])} | {f3(t['nmi'])} "
                     f"| {row['train_seconds'] / 60:.1f} |")
    ri = r["rows"][0]["random_init"]
    lines.append(f"| random init | - | - | {f3(ri['knn_k20'])} | {f3(ri['knn_k200'])} "
                 f"| {f3(ri['linear'])} | {f3(ri['nmi'])} | - |")
    return "\n".join(lines)


LOADERS = {"step": load_step}

TABLES = {"views": table_views, "folder": table_folder, "folder_cuda": table_folder,
          "canvas": table_canvas,
          "knn": table_knn,
          "swav_vs_lightly": table_swav,
          "compare": table_compare, "swav_claims": table_claims,
          "multicrop_claims": table_multicrop, "swav_sweep": table_sweep,
          "loss_scaling_cpu": table_loss_scaling, "ddp_cpu": table_ddp, "step": table_step,
          "eval_scale": table_eval_scale, "clustering_demo": table_clustering_demo}


def fill(path: Path) -> None:
    text = path.read_text()
    for name, fn in TABLES.items():
        r = LOADERS[name]() if name in LOADERS else load(name)
        pattern = re.compile(rf"(<!-- table:{name} -->\n).*?(<!-- /table:{name} -->)", re.S)
        if r is None or not pattern.search(text):
            continue
        body = fn(r) + "\n\n" + f"_{r.get('what', '')}_  \n_Machine: {r['machine']['cpu_count']}" \
            f" cores, torch {r['machine']['torch']}, {r['machine']['date']}._\n"
        text = pattern.sub(lambda m, b=body: m.group(1) + b + m.group(2), text)
    path.write_text(text)
    print(f"updated {path}")


if __name__ == "__main__":
    fill(HERE / "README.md")
    fill(HERE.parent / "README.md")
