#!/usr/bin/env bash
# Installs everything lingraft needs, from nothing, into $VENV (default .venv).
# System: Open MPI (mpirun, for mpi4py), numactl (deepspeed --bind_cores_to_rank) and
# mimalloc (preloaded into `prep pack`'s tokenizer workers; optional, see lingraft/preload.py).
set -euo pipefail
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

need_apt=()
command -v mpirun >/dev/null 2>&1 || need_apt+=(openmpi-bin libopenmpi-dev)
command -v numactl >/dev/null 2>&1 || need_apt+=(numactl)
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[bootstrap] apt-get install ${need_apt[*]}"
  $sudo apt-get update -qq
  apt_updated=1
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
# Optional: without it `prep pack` uses the system malloc; never fail the install over it.
ldconfig_bin=$(command -v ldconfig || echo /sbin/ldconfig)
if [ "$("$ldconfig_bin" -p 2>/dev/null | grep -c libmimalloc || true)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[bootstrap] apt-get install libmimalloc2.0 (optional: faster packing)"
  { { [ -n "${apt_updated:-}" ] || $sudo apt-get update -qq; } \
    && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends libmimalloc2.0; } \
    || echo "[bootstrap] libmimalloc2.0 not installed; prep pack will use the system malloc"
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip setuptools wheel
echo "[bootstrap] $TORCH_SPEC"
"${pip[@]}" "$TORCH_SPEC"
# DeepSpeed ships as an sdist whose setup.py imports torch: build it against the torch
# above (no build isolation, which would fetch a CUDA torch) and JIT no C++ ops.
echo "[bootstrap] deepspeed"
DS_BUILD_OPS=0 "${pip[@]}" --no-build-isolation deepspeed
echo "[bootstrap] lingraft[test]"
"${pip[@]}" -e ".[test]"
"$VENV/bin/python" -c "import torch, deepspeed, transformers, mpi4py; print('[bootstrap] torch', torch.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__)"
