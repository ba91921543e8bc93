# GPU image for lingraft clusters: CUDA, PyTorch, DeepSpeed, Open MPI, numactl, pdsh,
# and optionally flash-attn (--build-arg WITH_FLASH_ATTN=1; compiles for a long while).
# Used by the Slurm templates in launch/. Build: docker build -t lingraft:latest .
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG WITH_FLASH_ATTN=0
ARG MAX_JOBS=8
ARG DEEPSPEED_VERSION=0.19.8

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev build-essential git ca-certificates \
      openmpi-bin libopenmpi-dev numactl pdsh openssh-client openssh-server libaio-dev \
 && { apt-get install -y --no-install-recommends libmimalloc2.0 \
      || echo "libmimalloc2.0 not in this base image's archive: prep pack will use the system malloc"; } \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv "${VIRTUAL_ENV}"

# torch first, from the CUDA index, so no later dependency pulls another build.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
 && pip install "setuptools==84.2.1" "wheel==0.48.0" "ninja==1.13.2" "packaging==26.3"

WORKDIR /opt/lingraft
COPY setup.cfg pyproject.toml README.md ./
COPY lingraft ./lingraft
COPY data_prep ./data_prep
COPY vocabulary ./vocabulary
COPY train ./train
COPY propagate ./propagate
COPY evaluation ./evaluation
COPY launch ./launch
COPY ds_configs ./ds_configs
COPY configs ./configs

# DeepSpeed builds against the torch above; its C++ ops are JIT-compiled on first use.
# The project itself (".[test]") is local source, so DL3013 (pin pip versions) does not apply.
# hadolint ignore=DL3013
RUN pip install --no-build-isolation "deepspeed==${DEEPSPEED_VERSION}" \
 && pip install ".[test]" \
 && if [ "${WITH_FLASH_ATTN}" = "1" ]; then MAX_JOBS="${MAX_JOBS}" pip install --no-build-isolation ".[gpu]"; fi

# pdsh is DeepSpeed's default multi-node launcher; it must use ssh.
ENV PDSH_RCMD_TYPE=ssh
ENTRYPOINT []
CMD ["lingraft", "--help"]
