# syntax=docker/dockerfile:1
# Two images from one file (docs/deploy.md):
#   docker build --target operator -t etj-operator:0.1.0 .   the operator extra: kopf and clients, no torch
#   docker build --target workload -t etj-workload:0.1.0 .   the workload extra: CUDA torch, torchao, scikit-learn
# The project's core has no dependencies; each image installs its side's extra and nothing of the other's.
# Both build for linux/amd64 and linux/arm64 (docker buildx build --platform linux/amd64,linux/arm64 ...).
#
# The base image is a build argument. Production builds should pin it by digest, e.g.
#   --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest>
# (`docker buildx imagetools inspect python:3.11-slim-bookworm` prints the current digest). The default below is a
# tag because the digest cannot be resolved where this file is written and tested (no registry access).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: one wheel of the project (the contract and both packages; extras decide what each image installs)
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY contract/ contract/
COPY operator/ operator/
COPY workloads/ workloads/
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

# ---- the operator's virtual environment: the operator extra (kopf, aiohttp, clients; never the workload's) --
FROM build AS operator-venv
RUN python -m venv /opt/etj \
    && wheel="$(echo /wheels/efficient_training_operator-*.whl)" \
    && /opt/etj/bin/pip install --constraint constraints.txt "${wheel}[operator]"

# ---- the workload's virtual environment: the workload extra (torch, torchao, scikit-learn, pyyaml, NVML) -----
FROM build AS workload-venv
# PyPI's torch 2.13.0 wheels for Linux (x86_64 and aarch64) are the CUDA 13.0 build; they bring the CUDA
# runtime libraries and NCCL (nvidia-nccl-cu13) as wheels, so the image needs no CUDA base image: the node's
# driver (R580 or newer for CUDA 13) comes in through the NVIDIA container runtime. For a CPU-only image pass
#   --build-arg PIP_EXTRA_INDEX_URL=<the PyTorch CPU wheel index>
ARG PIP_EXTRA_INDEX_URL=""
RUN python -m venv /opt/etj \
    && wheel="$(echo /wheels/efficient_training_operator-*.whl)" \
    && /opt/etj/bin/pip install --constraint constraints.txt "${wheel}[workload]"

# ---- operator image ----------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS operator
LABEL org.opencontainers.image.title="etj-operator" \
      org.opencontainers.image.description="EfficientTrainingJob operator (kopf): runs PyTorch DDP jobs and manages their GPU energy" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/etj/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=operator-venv /opt/etj /opt/etj
# A numeric non-root user: Kubernetes can check runAsNonRoot without a passwd entry.
USER 65532:65532
# 8080: Prometheus metrics (ETJ_METRICS_PORT); 8081: kopf's liveness endpoint.
EXPOSE 8080 8081
ENTRYPOINT ["etj"]
CMD ["operator"]

# ---- workload image ----------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS workload
LABEL org.opencontainers.image.title="etj-workload" \
      org.opencontainers.image.description="EfficientTrainingJob training harness (torch DDP with energy control)" \
      org.opencontainers.image.licenses="Apache-2.0"
# Multi-node NCCL over RDMA (docs/deploy.md, "Multi-node networking"). NCCL's own InfiniBand/RoCE transport
# loads the rdma-core userspace at run time: libibverbs, its device providers (mlx5 for ConnectX, efa, ...) and
# librdmacm; without them NCCL falls back to TCP sockets. AWS EFA needs libfabric and the aws-ofi-nccl plugin
# on top: --build-arg EFA_INSTALLER_VERSION=1.39.0 (or later; from 1.39 the installer ships the plugin, in
# /opt/amazon/ofi-nccl) runs AWS's installer, without its kernel module (the node's), instead of Debian's
# rdma-core. The Debian packages are not pinned: bookworm keeps one version of each, and the release pins
# the base image by digest.
ARG EFA_INSTALLER_VERSION=""
# hadolint ignore=DL3008
RUN set -eu; \
    apt-get update; \
    if [ -n "${EFA_INSTALLER_VERSION}" ]; then \
      python -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], '/tmp/efa.tar.gz')" \
        "https://efa-installer.amazonaws.com/aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz"; \
      tar -xzf /tmp/efa.tar.gz -C /tmp; \
      env -C /tmp/aws-efa-installer ./efa_installer.sh -y --skip-kmod --skip-limit-conf --no-verify; \
      if [ -e /opt/amazon/ofi-nccl/lib/libnccl-net-ofi.so ] && [ ! -e /opt/amazon/ofi-nccl/lib/libnccl-net.so ]; then \
        ln -s libnccl-net-ofi.so /opt/amazon/ofi-nccl/lib/libnccl-net.so; \
      fi; \
      printf '%s\n' /opt/amazon/efa/lib /opt/amazon/ofi-nccl/lib > /etc/ld.so.conf.d/etj-efa.conf; \
      ldconfig; \
      rm -rf /tmp/efa.tar.gz /tmp/aws-efa-installer; \
    else \
      apt-get install -y --no-install-recommends libibverbs1 ibverbs-providers librdmacm1; \
    fi; \
    rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/etj/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
COPY --from=workload-venv /opt/etj /opt/etj
WORKDIR /tmp
# Non-root by default. Setting GPU power limits through NVML needs root and CAP_SYS_ADMIN: jobs whose
# spec.energy.power.mode is Fixed or Auto run the trainer with runAsUser: 0 (docs/deploy.md, "Images").
USER 65532:65532
# 29500: torch.distributed rendezvous; 9400: the harness's DCGM-compatible /metrics.
EXPOSE 29500 9400
CMD ["python", "-m", "etj_workload", "--help"]
