#!/usr/bin/env bash
# The paper's ablation grid (vision x head x loss x seed) on the real-notes twin, in one shot on a
# lent GPU machine. Run from the repo root with the ignored folder .devcarry carried (made by
# `python scripts/devcarry.py --notes NOTES --out .devcarry`):
#   .devcarry/notes.csv   the notes CSV (scripts/ablation_notes.py); never committed
#   .devcarry/minilm/     the MiniLM text tower with fp16 weights (config dtype float32)
#   .devcarry/whl/        wheels the image lacks (pydicom, nibabel: data/imageio imports them)
# Steps: install the wheels into $SITE, render the twin into $WORK, start one `ablate` process per
# (vision, seed) with a shared runs/ folder, wait until all end or DEADLINE seconds after the
# start (then kill the rest), aggregate the finished cells and copy to $OUT: gpu_ablation.log,
# ablation.csv, ablation.md, timings.txt, runs.tar.gz (metrics.json, train_summary.json,
# config.yaml of each run, no checkpoints) and logs.tar.gz (one log per process, the twin's).
# Environment (defaults): OUT (required), PYTHON (python3), EPOCHS (20), SIZE (64: model.image_size),
# TWIN_SIZE (64), RENDER (label), VISIONS (resnet,vit,swin), SEEDS (0,1,2), HEADS (linear,mlp),
# LOSSES (soft-binary,soft-findings,hard), ACCEL (gpu), BOOTSTRAP (500), WORKERS (1: data.num_workers
# per process), THREADS (1: OMP threads per process), DEADLINE (480), FINAL_TIMEOUT (60),
# EXTRA ("": more KEY=VALUE overrides, space-separated), SPLIT (vision-seed: one process per vision x
# seed; cell: one per vision x head x loss x seed), CARRY (.devcarry), WORK (a new temporary
# folder: the twin and the runs), SITE (a new temporary folder: the wheels).
# Locally (CPU, tiny): OUT=$(mktemp -d) PYTHON=.venv/bin/python ACCEL=cpu EPOCHS=1 SIZE=32 \
#   VISIONS=resnet SEEDS=0 HEADS=linear LOSSES=hard nice -n 15 bash scripts/gpu_ablation.sh
set -o pipefail
SECONDS=0
T0=$(date +%s)

: "${OUT:?set OUT to the folder that comes back}"
PYTHON=${PYTHON:-python3}
EPOCHS=${EPOCHS:-20}
SIZE=${SIZE:-64}
TWIN_SIZE=${TWIN_SIZE:-64}
RENDER=${RENDER:-label}
VISIONS=${VISIONS:-resnet,vit,swin}
SEEDS=${SEEDS:-0,1,2}
HEADS=${HEADS:-linear,mlp}
LOSSES=${LOSSES:-soft-binary,soft-findings,hard}
ACCEL=${ACCEL:-gpu}
BOOTSTRAP=${BOOTSTRAP:-500}
WORKERS=${WORKERS:-1}
THREADS=${THREADS:-1}
DEADLINE=${DEADLINE:-480}
FINAL_TIMEOUT=${FINAL_TIMEOUT:-60}
EXTRA=${EXTRA:-}
CARRY=${CARRY:-.devcarry}
WORK=${WORK:-$(mktemp -d -t gpuabl.XXXXXX)}
SITE=${SITE:-$(mktemp -d -t gpuabl-site.XXXXXX)}

mkdir -p "$OUT" "$WORK/logs"
exec > >(tee -a "$OUT/gpu_ablation.log") 2>&1
log() { printf '[%4ds] %s\n' "$SECONDS" "$*"; }

export ACCEL PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS

log "config: EPOCHS=$EPOCHS SIZE=$SIZE TWIN_SIZE=$TWIN_SIZE RENDER=$RENDER VISIONS=$VISIONS SEEDS=$SEEDS" \
    "HEADS=$HEADS LOSSES=$LOSSES ACCEL=$ACCEL BOOTSTRAP=$BOOTSTRAP WORKERS=$WORKERS THREADS=$THREADS" \
    "DEADLINE=$DEADLINE EXTRA=$EXTRA"

# 1. wheels the image lacks, then the project from src/ (it is not pip-installed there)
for f in "$CARRY/notes.csv" "$CARRY/minilm/config.json"; do
    [ -f "$f" ] || { log "missing $f: carry $CARRY"; exit 2; }
done
mkdir -p "$SITE"
if compgen -G "$CARRY/whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$CARRY"/whl/*.whl || { log "wheel install failed"; exit 3; }
fi
export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
CLI=("$PYTHON" -m lumbarclip.cli)
nvidia-smi --query-gpu=name,memory.total,driver_version,utilization.gpu --format=csv,noheader 2>/dev/null \
    || log "no nvidia-smi"
"$PYTHON" - <<'EOF' || { log "environment check failed"; exit 4; }
import os, sys, numpy, torch, transformers, lightning, timm, sklearn, pydicom, nibabel
import lumbarclip.cli, lumbarclip.experiments  # the whole train + evaluate import path
print(f"python {sys.version.split()[0]} torch {torch.__version__} cuda {torch.cuda.is_available()} "
      f"transformers {transformers.__version__} lightning {lightning.__version__} timm {timm.__version__} "
      f"numpy {numpy.__version__} sklearn {sklearn.__version__} pydicom {pydicom.__version__} "
      f"nibabel {nibabel.__version__} cpus {os.cpu_count()} threads {torch.get_num_threads()}")
if os.environ["ACCEL"] == "gpu" and not torch.cuda.is_available():
    sys.exit("ACCEL=gpu but torch sees no GPU")
EOF

# 2. the twin (rendered here, not carried)
TWIN=$WORK/twin-$RENDER-$TWIN_SIZE
if [ -f "$TWIN/manifest.csv" ]; then
    log "twin: reusing $TWIN"
else
    log "twin: rendering ($RENDER, ${TWIN_SIZE} px)"
    "${CLI[@]}" twin --notes "$CARRY/notes.csv" --out "$TWIN" --render "$RENDER" --size "$TWIN_SIZE" \
        --overwrite --no-progress >"$WORK/logs/twin.txt" 2>&1 || { tail -20 "$WORK/logs/twin.txt"; log "twin failed"; exit 5; }
    tail -3 "$WORK/logs/twin.txt"
fi
log "twin: $(($(wc -l <"$TWIN/manifest.csv") - 1)) images"

# 3. one ablate process per (vision, seed); each has its own --out (its own ablation.csv and
# .partial) whose runs/ links to the shared $ABL/runs, where the final call finds every cell
ABL=$WORK/abl
mkdir -p "$ABL/runs"
COMMON=(--data "$TWIN/manifest.csv" --head "$HEADS" --loss "$LOSSES" --bootstrap "$BOOTSTRAP" --no-progress
    --set model.text="$PWD/$CARRY/minilm" --set trainer.accelerator="$ACCEL" --set trainer.max_epochs="$EPOCHS"
    --set model.image_size="$SIZE" --set data.num_workers="$WORKERS")
for kv in $EXTRA; do COMMON+=(--set "$kv"); done
set -m  # each process in its own process group, so a kill takes its loader workers too
pids=() names=() starts=()
# SPLIT=cell: one process per cell (vision, head, loss, seed) instead of per (vision, seed)
if [ "${SPLIT:-vision-seed}" = cell ]; then parts=(); for h in ${HEADS//,/ }; do for l in ${LOSSES//,/ }; do parts+=("$h:$l"); done; done
else parts=("$HEADS:$LOSSES"); fi
for v in ${VISIONS//,/ }; do
    for s in ${SEEDS//,/ }; do
        for part in "${parts[@]}"; do
        name=$v-s$s; [ "${#parts[@]}" -gt 1 ] && name=$v-${part/:/-}-s$s
        mkdir -p "$ABL/p-$name" && ln -sfn ../runs "$ABL/p-$name/runs"
        rm -f "$ABL/p-$name"/ablation.csv* "$ABL/p-$name/ablation.md"  # stale rows of an earlier call
        "${CLI[@]}" ablate --out "$ABL/p-$name" --vision "$v" --seeds "$s" --overwrite "${COMMON[@]}" \
            --head "${part%%:*}" --loss "${part#*:}" >"$WORK/logs/ablate-$name.txt" 2>&1 &
        pids+=($!) names+=("$name") starts+=("$SECONDS")
        done
    done
done
set +m
log "started ${#pids[@]} ablate processes: ${names[*]}"

cells_done() { find "$ABL/runs" -path '*/eval-test/metrics.json' 2>/dev/null | wc -l; }
alive() { local n=0 p; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && n=$((n + 1)); done; echo $n; }
last=$SECONDS
while [ "$(alive)" -gt 0 ] && [ "$SECONDS" -lt "$DEADLINE" ]; do
    sleep 2
    if [ $((SECONDS - last)) -ge 30 ]; then
        last=$SECONDS
        log "running $(alive)/${#pids[@]}, cells evaluated $(cells_done);" \
            "$(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null)"
    fi
done
killed=0
if [ "$(alive)" -gt 0 ]; then
    log "DEADLINE ${DEADLINE}s: killing $(alive) process(es)"
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && { kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p"; killed=1; }; done
    sleep 3
    for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null; done
fi
failed=0
declare -A rcs walls
for i in "${!pids[@]}"; do
    wait "${pids[$i]}"; rc=$?
    rcs[${names[$i]}]=$rc
    [ "$rc" -ne 0 ] && failed=1
    [ -f "$ABL/p-${names[$i]}/ablation.csv" ] && walls[${names[$i]}]=$(($(stat -c %Y "$ABL/p-${names[$i]}/ablation.csv") - T0 - ${starts[$i]}))
    log "process ${names[$i]}: rc $rc${walls[${names[$i]}]:+, wall ${walls[${names[$i]}]} s}; $(grep -v '^|' "$WORK/logs/ablate-${names[$i]}.txt" | tail -1)"
    if [ "$rc" -ne 0 ] && [ "$killed" = 0 ]; then grep -v '^|' "$WORK/logs/ablate-${names[$i]}.txt" | tail -15; fi
done

# 4. aggregate: the rows every process wrote (ablation.csv, or .partial for a killed one) through
# experiments.markdown_table; when every process finished, also the official final call over all
# axes with --overwrite, which reuses every cell (checked: no train_summary.json may change)
export ABL WORK DEADLINE killed NAMES="${names[*]}"
"$PYTHON" - <<'EOF'
import csv, os
from pathlib import Path
from lumbarclip.experiments import markdown_table
abl, rows = Path(os.environ["ABL"]), []
for name in os.environ["NAMES"].split():
    for f in ("ablation.csv", "ablation.csv.partial"):
        if (abl / f"p-{name}" / f).is_file():
            with (abl / f"p-{name}" / f).open(newline="", encoding="utf-8") as fh:
                rows += list(csv.DictReader(fh))
            break
fields = list(dict.fromkeys(k for r in rows for k in r)) or ["vision", "head", "loss", "seed"]
with (abl / "ablation-collected.csv").open("w", newline="", encoding="utf-8") as fh:
    w = csv.DictWriter(fh, fieldnames=fields); w.writeheader(); w.writerows(rows)
note = f"Collected {len(rows)} finished cell(s)" + (
    f"; processes killed at the {os.environ['DEADLINE']} s deadline" if os.environ["killed"] == "1" else "")
(abl / "ablation-collected.md").write_text(note + ".\n\n" + markdown_table(rows) + "\n", encoding="utf-8")
lines = [f"{'vision':8} {'head':6} {'loss':14} {'seed':4} {'train_s':>8} {'eval_s':>8}"]
lines += [f"{r['vision']:8} {r['head']:6} {r['loss']:14} {r['seed']:4} {r['train_seconds']:>8} {r['eval_seconds']:>8}" for r in rows]
for v in dict.fromkeys(r["vision"] for r in rows):
    t = [float(r["train_seconds"]) for r in rows if r["vision"] == v and r["train_seconds"]]
    e = [float(r["eval_seconds"]) for r in rows if r["vision"] == v and r["eval_seconds"]]
    lines.append(f"mean {v}: train {sum(t) / max(len(t), 1):.1f} s, eval {sum(e) / max(len(e), 1):.1f} s over {len(t)} cell(s)")
(Path(os.environ["WORK"]) / "timings.txt").write_text("\n".join(lines) + "\n")
print(note)
EOF
final=1
if [ "$killed" = 0 ] && [ "$failed" = 0 ]; then
    touch "$WORK/before-final"
    log "final call over all axes (--overwrite, reuses the cells)"
    timeout "$FINAL_TIMEOUT" "${CLI[@]}" ablate --out "$ABL" --vision "$VISIONS" --seeds "$SEEDS" --overwrite "${COMMON[@]}" \
        >"$WORK/logs/final.txt" 2>&1
    final=$?
    retrained=$(find "$ABL/runs" -name train_summary.json -newer "$WORK/before-final" | wc -l)
    log "final call: rc $final, cells retrained $retrained"
    [ "$retrained" -eq 0 ] || final=1
fi
if [ "$final" = 0 ] && [ -f "$ABL/ablation.md" ]; then
    cp "$ABL/ablation.csv" "$ABL/ablation.md" "$OUT/"
    cmp -s <(sed 1,2d "$ABL/ablation-collected.md") "$ABL/ablation.md" && log "collected table == final table" \
        || log "collected table differs from the final call's (row order?)"
else
    log "using the collected rows (final call skipped or failed)"
    cp "$ABL/ablation-collected.csv" "$OUT/ablation.csv"
    cp "$ABL/ablation-collected.md" "$OUT/ablation.md"
fi
for n in "${names[@]}"; do echo "process $n: rc ${rcs[$n]} wall ${walls[$n]:-?} s"; done >>"$WORK/timings.txt"
echo "script: ${SECONDS} s" >>"$WORK/timings.txt"
cp "$WORK/timings.txt" "$OUT/"
(cd "$ABL/runs" && find . -mindepth 2 -maxdepth 3 \( -path './*/eval-test/metrics.json' -o -path './*/train_summary.json' \
    -o -path './*/config.yaml' \) -print0 | tar -czf "$OUT/runs.tar.gz" --null -T -)
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs
cat "$OUT/ablation.md"
log "done: $(ls "$OUT" | tr '\n' ' ')"
sleep 1  # let tee flush the log
