#!/usr/bin/env bash
# On a lent GPU machine, from the repository root:  tools/gpu_dali_part.sh K
#
# DALI and its libraries (~250 MiB) travel in parts of < 64 MiB, one call each, made back to
# back while the machine stays warm (../shared/gpu/README.md): .carry/dali-K holds
# dali.tar.<i> pieces of one tar of wheels, and the last part also dali.tar.sha256. This
# copies part K to /tmp/stage; once the checksum file is there, it checks the whole tar,
# unpacks it and installs its wheels into /tmp/site (tools/gpu_check.sh puts that on the
# path). Exits non-zero, saying why, if a piece is missing or the checksum differs (then
# the machine was probably given back between calls: start the parts over).
set -euo pipefail
k=${1:?usage: tools/gpu_dali_part.sh K}
cd "$(dirname "$0")/.."
stage=/tmp/stage site=${DINO_CARRY_SITE:-/tmp/site}
mkdir -p "$stage"
cp .carry/dali-"$k"/* "$stage"/
ls -la "$stage"
[ -f "$stage/dali.tar.sha256" ] || exit 0
pieces=$(ls "$stage" | grep -E '^dali\.tar\.[0-9]+$' | sort -t. -k3 -n | sed "s#^#$stage/#")
want=$(cat "$stage/dali.tar.sha256")
got=$(cat $pieces | sha256sum | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
  echo "gpu_dali_part: checksum of the staged pieces differs ($got != $want): a part is" \
       "missing (machine given back between calls?); start the parts over" >&2
  exit 1
fi
rm -rf /tmp/w && mkdir -p /tmp/w
cat $pieces | tar -x -C /tmp/w
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" /tmp/w/*.whl
PYTHONPATH=$site python3 -c "import nvidia.dali as d; print('DALI', d.__version__, 'installed')"
