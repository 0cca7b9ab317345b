#!/usr/bin/env bash
# The GPU proof of issue #12 in one command, for a machine with one CUDA GPU (at most ~8 minutes
# on one H200). Everything it writes lands under OUTDIR (big run files stay in a scratch folder):
#
#   (a) the CUDA tests: pytest -m cuda (or -k cuda while no 'cuda' marker is registered);
#   (b) views on the GPU against lightly's SwaVTransform loader on all of the machine's cores
#       (bench_views.py --quick; lightly side skipped, and logged, when lightly is missing);
#   (c) bench_step.py on CUDA, bf16: ResNet-18 (CIFAR stem) at 2x32+4x16 (demo images),
#       ResNet-50 and a timm ViT-S/16 (AdamW, clipping, weight-decay cosine: the optimiser of
#       recipes/swav/imagenet-vits16.yaml) at 2x224+6x96 (random 256x256 images);
#   (e) bench_folder.py --device cuda: 500x375 JPEGs to 2x224 + 6x96 crops on the GPU (folder
#       decoded in the workers or by nvJPEG, prepared store) against torchvision + lightly;
#   (d) a SwAV run, ResNet-18 CIFAR stem, batch 256, on the CIFAR-10 npz for as many epochs as fit
#       the time left (measured from a 40-step calibration run), and its kNN next to random init:
#       from eval.json when faiss is installed, else from benchmarks/_proof.py knn (exact cosine
#       search with torch, ssl_zoo's own vote);
#   (f) the SwAV paper's linear protocol on that run's backbone (ssl-zoo eval --protocol
#       linear-paper: a linear layer on frozen features of RandomResizedCrop+flip crops made on
#       the GPU, bf16, SGD lr 0.3 per 256, cosine; PAPER_EPOCHS epochs, default 5; 1 in a dry
#       run): RUN/eval_linear_paper.json, last-epoch and best-epoch top-1.
#
# Usage: bash benchmarks/gpu_proof.sh OUTDIR [--dry-run] [--npz PATH] [--budget SECONDS]
#   --dry-run (or no CUDA): every step with tiny settings on the CPU, in a few minutes.
#   --npz: the CIFAR-10 npz (default $SSL_ZOO_PROOF_NPZ, then .proof/cifar10_proof.npz, then
#          ../shared/data/cifar10_subset.npz). The shared file (109 MiB) is too big to carry; make
#          a 41 MiB subset first: python benchmarks/_proof.py subset \
#              ../shared/data/cifar10_subset.npz .proof/cifar10_proof.npz
#   --budget: seconds for the whole proof (default 450); the SwAV run gets what is left.
# Wheels in .whl/ (lightly and its needs, faiss-cpu) are installed to /tmp/ssl_zoo_site first.
# Results: OUTDIR/summary.json, OUTDIR/proof.log, and OUTDIR/proof.tar.gz holding every file.
set -u -o pipefail

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
OUT="" DRY=0 NPZ="${SSL_ZOO_PROOF_NPZ:-}" BUDGET="${SSL_ZOO_PROOF_BUDGET:-450}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --npz) NPZ="${2:?--npz needs a path}"; shift ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
    *) [ -z "$OUT" ] || { echo "one OUTDIR only" >&2; exit 2; }; OUT="$1" ;;
  esac
  shift
done
[ -n "$OUT" ] || { usage >&2; exit 2; }
case "$BUDGET" in ''|*[!0-9]*) echo "--budget must be whole seconds" >&2; exit 2 ;; esac

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
cd "$ROOT" || exit 1
WORK="${SSL_ZOO_PROOF_WORK:-$(mktemp -d /tmp/ssl_zoo_proof.XXXXXX)}"
mkdir -p "$WORK"
rm -f "$OUT/status.jsonl"
exec > >(tee "$OUT/proof.log") 2>&1
PY="${PYTHON:-python3}"
T0=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning}"

say() { echo "[proof +$(( $(date +%s) - T0 ))s] $*"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# status NAME RC SECONDS NOTE: one JSON line per step
status() { printf '{"step": "%s", "rc": %s, "seconds": %s, "note": "%s"}\n' "$1" "$2" "$3" \
  "$(printf '%s' "$4" | tr '"\\\n' "'/ ")" >> "$OUT/status.jsonl"; }
# step NAME CAP_SECONDS CMD...: run with a timeout of min(CAP, time left), log to OUTDIR/NAME.log
step() {
  local name="$1" cap="$2"; shift 2
  local t; t=$(left); [ "$t" -lt "$cap" ] && cap="$t"
  if [ "$cap" -lt 10 ]; then say "$name: skipped, out of time"; status "$name" null 0 "out of time"
    return 1; fi
  say "$name (at most ${cap}s): $*"
  local s; s=$(date +%s)
  timeout -k 10 "$cap" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=$?
  [ "$rc" -eq 124 ] && say "$name: TIMED OUT after ${cap}s"
  say "$name: rc $rc in $(( $(date +%s) - s ))s"
  status "$name" "$rc" "$(( $(date +%s) - s ))" "${NOTE:-}"
  return "$rc"
}

# ---- environment ---------------------------------------------------------------------------
say "repo $ROOT, OUTDIR $OUT, scratch $WORK, budget ${BUDGET}s, dry run $DRY"
if ls .whl/*.whl >/dev/null 2>&1; then
  say "installing carried wheels: $(ls .whl | tr '\n' ' ')"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/ssl_zoo_site .whl/*.whl && export PYTHONPATH="/tmp/ssl_zoo_site${PYTHONPATH:+:$PYTHONPATH}" \
    || say "WARNING: installing .whl/*.whl failed; going on without them"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
has() { "$PY" -c "import $1" >/dev/null 2>&1; }
"$PY" -c "import torch, ssl_zoo; print('python', __import__('sys').version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" \
  || { say "FATAL: torch or ssl_zoo does not import"; exit 1; }
FAISS=0; has faiss && FAISS=1
LIGHTLY=0; has lightly.transforms && LIGHTLY=1
say "faiss: $([ $FAISS = 1 ] && echo yes || echo 'NO: kNN by benchmarks/_proof.py knn (torch), PCL timed in its warm-up phase, k-means/NMI skipped')"
say "lightly: $([ $LIGHTLY = 1 ] && echo yes || echo 'NO: the lightly side of the views benchmark is skipped; tests importing lightly fail to collect')"
# our methods are found through the ssl_zoo.methods entry points, which need package metadata
METHODS_VIA="installed metadata"
if ! "$PY" benchmarks/_proof.py methods; then
  say "no ssl-zoo metadata: trying pip install --no-deps --no-index --no-build-isolation -e ."
  if timeout 180 "$PY" -m pip install -q --no-deps --no-index --no-build-isolation -e . \
      && "$PY" benchmarks/_proof.py methods; then
    METHODS_VIA="pip install -e (offline)"
  else
    say "pip could not install it; writing entry-point metadata to $WORK/meta instead"
    "$PY" benchmarks/_proof.py metadata "$WORK/meta" && export PYTHONPATH="$WORK/meta:$PYTHONPATH"
    "$PY" benchmarks/_proof.py methods || { say "FATAL: methods do not resolve"; exit 1; }
    METHODS_VIA="generated dist-info in $WORK/meta"
  fi
fi
say "methods resolve through: $METHODS_VIA"
CUDA=0; "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" && CUDA=1
if [ "$DRY" = 0 ] && [ "$CUDA" = 0 ]; then say "no CUDA device: dry run instead"; DRY=1; fi
status environment 0 0 "dry_run=$DRY cuda=$CUDA faiss=$FAISS lightly=$LIGHTLY methods_via=$METHODS_VIA"
NPROC=$(nproc 2>/dev/null || echo 2)

# ---- data for (d) --------------------------------------------------------------------------
if [ -z "$NPZ" ]; then
  for c in .proof/cifar10_proof.npz ../shared/data/cifar10_subset.npz; do
    [ -f "$c" ] && { NPZ="$c"; break; }; done
fi
if [ -n "$NPZ" ] && [ ! -f "$NPZ" ]; then say "WARNING: --npz $NPZ not found"; NPZ=""; fi
if [ -z "$NPZ" ]; then
  say "NO CIFAR-10 npz: the timed SwAV run (d) needs one. Make a carryable subset with"
  say "  python benchmarks/_proof.py subset ../shared/data/cifar10_subset.npz .proof/cifar10_proof.npz"
  say "and carry .proof (or pass --npz PATH / set SSL_ZOO_PROOF_NPZ)."
fi

# ---- (a) CUDA tests --------------------------------------------------------------------------
if "$PY" -m pytest --markers -p no:cacheprovider 2>/dev/null | grep -q '^@pytest.mark.cuda'; then
  SEL=(-m cuda); NOTE="selection -m cuda"
else
  SEL=(-k cuda); NOTE="no cuda marker registered: selection -k cuda"
fi
say "tests: $NOTE"
step tests 150 "$PY" -m pytest -q -p no:cacheprovider --continue-on-collection-errors \
  "${SEL[@]}" -rsfE
if [ "$?" = 1 ] && ! tail -n 1 "$OUT/tests.log" | grep -qE '[0-9]+ failed' \
    && tail -n 1 "$OUT/tests.log" | grep -qE '[0-9]+ errors?'; then
  NOTE="no test failed; $(grep -c '^ERROR ' "$OUT/tests.log") module(s) could not be collected (a missing package, see tests.log): their tests did not run"
  say "tests: $NOTE"
  status tests 0 0 "$NOTE"
fi
NOTE=""

# ---- (c) the training step against the backbone alone ----------------------------------------
# SwAV as the paper on ImageNet; K=3000 prototypes need >= 3000 images (SwAV's own check)
SWAV_PAPER=(--method-set swav:method.num_prototypes=3000
            --n-images 3072)
# SwAV at 32 px with its local crops on (2x32 + 4x16; the CIFAR-size default is 2x32)
SWAV_MULTI=(--method-set swav:views.groups.1.count=4)
# SwAV with a ViT-S/16 (timm; position embeddings resampled for the 96-px crops), the optimiser
# side of recipes/swav/imagenet-vits16.yaml (DINO's official ViT-S/16 settings)
VIT_S16=(--backbone timm:vit_small_patch16_224 --methods swav --set train.optimizer=adamw
         --set train.weight_decay=0.04 --set train.weight_decay_end=0.4
         --set train.clip_grad_norm=3.0)
if [ "$DRY" = 0 ]; then
  step step_r18 170 "$PY" benchmarks/bench_step.py --device cuda --backbone resnet18 \
    --set backbone_stem=cifar --amp bf16 --rounds 5 --steps 20 --warmup 10 --tag r18 \
    "${SWAV_MULTI[@]}" --out "$OUT"
  step step_r50 210 "$PY" benchmarks/bench_step.py --device cuda --backbone resnet50 \
    --image-size 224 --amp bf16 --rounds 3 --steps 10 --warmup 5 --profile-steps 3 --tag r50 \
    "${SWAV_PAPER[@]}" --out "$OUT"
  step step_vits16 150 "$PY" benchmarks/bench_step.py --device cuda --image-size 224 --amp bf16 \
    --rounds 3 --steps 10 --warmup 5 --profile-steps 3 --tag vits16 "${SWAV_PAPER[@]}" \
    "${VIT_S16[@]}" --out "$OUT"
else
  TINY=(--device cpu --batch-size 8 --rounds 1 --steps 1 --warmup 1 --profile-steps 1 --threads 1)
  step step_r18 240 "$PY" benchmarks/bench_step.py "${TINY[@]}" --backbone resnet18 \
    --set backbone_stem=cifar --amp bf16 --tag r18 "${SWAV_MULTI[@]}" --out "$OUT"
  step step_r50 180 "$PY" benchmarks/bench_step.py "${TINY[@]}" --backbone resnet50 \
    --image-size 64 --batch-size 4 --methods swav,moco --amp bf16 --tag r50 "${SWAV_PAPER[@]}" \
    --out "$OUT"
  # 112-px crops of 128-px images: sizes the 16-px patches divide (64 px would make 73-px images)
  step step_vits16 180 "$PY" benchmarks/bench_step.py "${TINY[@]}" --image-size 112 \
    --batch-size 4 --amp bf16 --tag vits16 "${SWAV_PAPER[@]}" "${VIT_S16[@]}" --out "$OUT"
fi

# ---- (b) views on the GPU against lightly ----------------------------------------------------
if [ "$DRY" = 0 ]; then
  step views 120 "$PY" benchmarks/bench_views.py --quick --lightly-workers "$NPROC" --out "$OUT"
else
  step views 90 "$PY" benchmarks/bench_views.py --seconds 0.3 --rounds 1 --threads 1 --n-big 8 \
    --lightly-workers 1 --no-gpu --out "$OUT"
fi

# ---- (e) real-size JPEGs to crops on the GPU: folder (decoded in the workers or by nvJPEG),
#      prepared store, torchvision + lightly's SwaVTransform (needs lightly and the npz) -------
if [ "$LIGHTLY" = 1 ] && [ -n "$NPZ" ]; then
  if [ "$DRY" = 0 ]; then
    step folder 110 "$PY" benchmarks/bench_folder.py --device cuda --images 800 \
      --workers "$NPROC" --batch 64 --rounds 2 --npz "$NPZ" --out "$OUT"
  else
    step folder 90 "$PY" benchmarks/bench_folder.py --images 32 --workers 1 --batch 8 \
      --rounds 1 --npz "$NPZ" --out "$OUT"
  fi
else
  say "folder: skipped (bench_folder.py needs lightly for its torchvision side, and the npz)"
fi

# ---- (d) a timed SwAV run and its kNN next to random init ------------------------------------
if [ -n "$NPZ" ]; then
  DATA="$NPZ"
  if [ "$DRY" = 1 ]; then
    "$PY" benchmarks/_proof.py subset "$NPZ" "$WORK/tiny.npz" --n-train 256 --n-test 128
    DATA="$WORK/tiny.npz"
  fi
  NET=(--backbone resnet18 --set backbone_stem=cifar)
  [ "$DRY" = 1 ] && NET=(--backbone convnet)  # the same commands, a CPU-sized network
  TRAIN=("$PY" -m ssl_zoo train --method swav --dataset "npz:$DATA" "${NET[@]}"
         --set eval.batch_size=512 --no-progress --set eval.linear=false
         --set eval.clustering=false --set eval.pictures=false)
  BATCH=256; [ "$DRY" = 1 ] && BATCH=32
  CAL_STEPS=40; [ "$DRY" = 1 ] && CAL_STEPS=4
  rm -rf "$WORK/swav_calib" "$WORK/swav_run"
  if step train_calibration 90 "${TRAIN[@]}" --batch-size $BATCH --epochs 1 --no-eval \
      --set train.max_steps=$CAL_STEPS --set train.log_every_iters=$(( CAL_STEPS / 4 )) \
      --out "$WORK/swav_calib"; then
    RESERVE=60; [ "$DRY" = 1 ] && RESERVE=0
    PAPER_CAP=90  # (f) the paper's linear protocol after the run
    SECONDS_FOR_TRAINING=$(( $(left) - RESERVE - PAPER_CAP - 20 ))
    [ "$DRY" = 1 ] && SECONDS_FOR_TRAINING=5
    EPOCHS=$("$PY" benchmarks/_proof.py epochs "$WORK/swav_calib" "$SECONDS_FOR_TRAINING")
    say "training budget ${SECONDS_FOR_TRAINING}s -> $EPOCHS epochs at batch $BATCH"
    EVAL=(); [ "$FAISS" = 0 ] && EVAL=(--no-eval)
    NOTE="budget ${SECONDS_FOR_TRAINING}s, $EPOCHS epochs, batch $BATCH, data $DATA"
    if step train "$(( SECONDS_FOR_TRAINING + RESERVE + 60 ))" "${TRAIN[@]}" --batch-size $BATCH \
        --epochs "$EPOCHS" "${EVAL[@]}" --out "$WORK/swav_run"; then
      NOTE=""
      if [ "$FAISS" = 0 ] || [ "$DRY" = 1 ]; then
        step knn_torch 90 "$PY" benchmarks/_proof.py knn "$WORK/swav_run" "$OUT/knn_torch.json"
      fi
      # (f) the paper's linear protocol on the run's backbone (a short run of the trainer)
      PAPER_EPOCHS="${PAPER_EPOCHS:-5}"; [ "$DRY" = 1 ] && PAPER_EPOCHS=1
      PAPER_BATCH=256; [ "$DRY" = 1 ] && PAPER_BATCH=32
      NOTE="linear-paper, $PAPER_EPOCHS epochs, batch $PAPER_BATCH"
      step paper_linear "$PAPER_CAP" "$PY" -m ssl_zoo eval "$WORK/swav_run" \
        --protocol linear-paper --no-progress --set train.epochs="$PAPER_EPOCHS" \
        --set train.batch_size=$PAPER_BATCH --set eval.batch_size=512
      mkdir -p "$OUT/swav_run/linear_paper"
      for f in config.json run_info.json train_summary.json metrics.jsonl; do
        [ -f "$WORK/swav_run/linear_paper/$f" ] && cp "$WORK/swav_run/linear_paper/$f" \
          "$OUT/swav_run/linear_paper/"
      done
    fi
    NOTE=""
    mkdir -p "$OUT/swav_run" "$OUT/swav_calib"
    for f in config.json run_info.json train_summary.json metrics.jsonl eval.json \
        eval_linear_paper.json; do
      [ -f "$WORK/swav_run/$f" ] && cp "$WORK/swav_run/$f" "$OUT/swav_run/"
      [ -f "$WORK/swav_calib/$f" ] && cp "$WORK/swav_calib/$f" "$OUT/swav_calib/"
    done
  fi
else
  status train null 0 "no CIFAR-10 npz (see proof.log)"
fi

# ---- summary -------------------------------------------------------------------------------
"$PY" benchmarks/_proof.py summary "$OUT" > "$OUT/summary.log" 2>&1
RC=$?
say "done in $(( $(date +%s) - T0 ))s; $("$PY" -c "import json, sys; s = json.load(open(sys.argv[1])); print('failed steps:', ', '.join(s['failed_steps']) or 'none', '- skipped:', ', '.join(s['skipped_steps']) or 'none')" "$OUT/summary.json" 2>/dev/null || echo 'no summary.json: see summary.log')"
tar -czf "$WORK/proof.tar.gz" -C "$OUT" --exclude=proof.tar.gz . && mv "$WORK/proof.tar.gz" "$OUT/"
say "wrote $OUT/summary.json, $OUT/proof.log, $OUT/proof.tar.gz"
[ -z "${SSL_ZOO_PROOF_WORK:-}" ] && rm -rf "$WORK"
exit "$RC"
