#!/usr/bin/env bash
# On a lent GPU machine, from the repository root:  tools/gpu_dali_part.sh K
#
# DALI and its libraries travel as one xz tar of their unpacked wheels (tools/gpu_carry.sh),
# split into parts of < 64 MiB carried one per call, back to back while the machine stays
# warm: .carry/dali-K holds dali.txz.<i>, the last part also dali.txz.sha256. This copies
# part K to the stage folder; once the checksum file is there it checks the whole, and
# unpacks it into the site folder that tools/gpu_check.sh puts on the path (the layout
# pip install --target gives). Exits non-zero, saying why, when a piece is missing or the
# checksum differs (the machine was probably given back between calls: start over).
# Environment: DINO_CARRY_STAGE (/tmp/stage), DINO_CARRY_SITE (/tmp/site), PYTHON (python3).
set -euo pipefail
k=${1:?usage: tools/gpu_dali_part.sh K}
cd "$(dirname "$0")/.."
stage=${DINO_CARRY_STAGE:-/tmp/stage} site=${DINO_CARRY_SITE:-/tmp/site} py=${PYTHON:-python3}
[ -d ".carry/dali-$k" ] || { echo "gpu_dali_part: .carry/dali-$k is not here (carry it)" >&2; exit 1; }
mkdir -p "$stage"
cp .carry/dali-"$k"/* "$stage"/
echo "gpu_dali_part: staged part $k: $(ls "$stage" | tr '\n' ' ')"
[ -f "$stage/dali.txz.sha256" ] || exit 0
pieces=$(ls "$stage" | grep -E '^dali\.txz\.[0-9]+$' | sort -t. -k3 -n | sed "s#^#$stage/#")
want=$(cat "$stage/dali.txz.sha256")
got=$(cat $pieces | sha256sum | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
  echo "gpu_dali_part: the staged pieces ($(echo $pieces | wc -w)) do not add up to the packed" \
       "DALI (sha256 $got != $want): a part is missing; start the parts over" >&2
  exit 1
fi
mkdir -p "$site"
start=$(date +%s)
if command -v xz >/dev/null; then
  cat $pieces | xz -d -T0 | tar -x -C "$site"
else
  cat $pieces | "$py" -c "import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall(sys.argv[1], filter='tar')" "$site"
fi
rm -rf "$stage"
PYTHONPATH=$site "$py" -c "import nvidia.dali as d; print('gpu_dali_part: DALI', d.__version__, 'unpacked in', $(date +%s) - $start, 's')"
