#!/usr/bin/env bash
# On a lent GPU machine, from the repository root:  tools/gpu_check.sh OUTDIR [options]
#
# Installs the carried wheels that the machine lacks (.carry/ffcv, made by
# tools/gpu_carry.sh; DALI once tools/gpu_dali_part.sh has unpacked it into the same
# target), points Python at them and at this tree, and runs `dino-bench gpu OUTDIR`
# (benchmarks/gpu/check.py): every GPU part, each in its own time box, then a one-screen
# summary. Options go to dino-bench gpu (--parts, --only dali, --budget-s); see its --help.
# On a machine without a GPU every part is skipped with its reason (a dry run).
set -uo pipefail
out=${1:?usage: tools/gpu_check.sh OUTDIR [dino-bench gpu options]}
shift
cd "$(dirname "$0")/.."
site=${DINO_CARRY_SITE:-/tmp/site}
if [ -d .carry/ffcv ] && ! PYTHONPATH=$site python3 -c "import ffcv" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .carry/ffcv/*.whl \
    || echo "gpu_check: installing .carry/ffcv failed; FFCV parts will be skipped" >&2
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 -m benchmarks.gpu.check "$out" "$@"
