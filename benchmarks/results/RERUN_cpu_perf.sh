#!/usr/bin/env bash
# Issue 26 (CPU side): the measurements behind the results files of branch cpu-perf.
# Run on a QUIET machine (nothing else running; these figures were only ever taken on a
# shared, loaded machine, as same-run A/B checks, and were not committed), from the
# repository root after the merge. Whole run: ~13 min on 2 cores (estimates per step
# below, from the quiet-machine figures of 2026-12-05); ~10 GB of temporary disk for the
# 100k scale step (set TMPDIR to a disk with room; hard links need the corpus's file system
# for the inputs, outputs go to TMPDIR).
#
# Writes into benchmarks/results/ (or $OUT): <machine>_<yyyymm>_{convert,convert_scale,
# stages,pipeline}.{md,json,csv,png}; each file states its command and the load average.
set -euo pipefail
OUT=${OUT:-benchmarks/results}
COMMON=(--device cpu --no-tensorboard --output-dir "$OUT")
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) (want < 0.3)"

# 1. dino-convert vs FFCV's writer, in-process AND whole process (start to exit), 1 and 2
#    workers, 8192 ImageNet-like images (~3 min). Goals: process_speedup >= 3 for both
#    formats at 1 and 2 workers; speedup_per_core ffcv >= 1.5, wds >= 3.
dino-bench convert "${COMMON[@]}" --no-verify --repeats 1

# 2. Scale: the corpus replicated to 10,000 and 100,000 images, whole-process images/s and
#    peak memory of the converter + workers (summed PSS, each physical page once; summed
#    RSS in peak_rss_mb), 2 workers, plus 10k at 1 worker for the scaling;
#    ImageNet-1k projection at 16 and 64 cores in the notes (~4 min: 2 x 100k conversions
#    at ~3,000 img/s, 9 GB written each). If the disk is slow and this step runs long,
#    use the smaller pair instead and say so with the results:
#      dino-bench convert "${COMMON[@]}" --images 40000 --scale-base 4000
#    Goal: rate_vs_base and memory_vs_base within 10% of 1.
dino-bench convert "${COMMON[@]}" --images 100000 --scale-base 10000 --workers 2

# 3. The FFCV CPU executor stage by stage, ms per image (CPU time of one thread) next to
#    each stage's floor, 256 images, best of 5 (~1 min).
dino-bench stages "${COMMON[@]}"

# 4. The FFCV CPU pipeline against the PIL recipe, per core, same run (~3 min): the command
#    of the 202612 results file (batch 8), then batch 64, where the recycled outputs matter
#    (a batch's finished views are ~150 MB; at batch 8 glibc reuses freed memory anyway).
#    Goal: speedup_per_core >= 8 (ffcv row).
dino-bench pipeline --quick --batches 30 --warmup-batches 5 --seconds 10 --corpus-images 8192 \
    --backends reference ffcv --no-tensorboard --output-dir "$OUT/batch8"
dino-bench pipeline --quick --batch-size 64 --batches 8 --warmup-batches 2 --seconds 10 \
    --corpus-images 8192 --backends reference ffcv --no-tensorboard \
    --output-dir "$OUT/batch64"
#    And batch 32, the non-quick default (~1 min); the goal holds at 8, 32 and 64.
dino-bench pipeline --quick --batch-size 32 --batches 10 --warmup-batches 3 --seconds 10 \
    --corpus-images 8192 --backends reference ffcv --no-tensorboard \
    --output-dir "$OUT/batch32"

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
