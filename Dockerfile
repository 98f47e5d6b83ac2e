# labelq: one image for the worker and the producer (ENTRYPOINT is `labelq`).
#
#   CPU (small; torch from PyTorch's CPU wheel index):
#     docker build -t labelq:cpu .
#   CUDA (torch's CUDA wheels bring their own CUDA runtime; the host needs only the
#   NVIDIA driver and the NVIDIA Container Toolkit):
#     docker build -t labelq:cuda --build-arg TORCH_VARIANT=cu128 .
#   A base that already ships torch (it is kept, not reinstalled), e.g.
#     docker build -t labelq:cuda --build-arg BASE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime .
#
# BASE must provide python3 (>= 3.10) with pip. TORCH_INDEX overrides the wheel index
# outright (a mirror, or https://pypi.org/simple for PyPI's default CUDA build).
# Models are downloaded on first use into HF_HOME=/models: mount a volume there so
# every container on a host shares one copy (see docs/deploy.md).

ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/${TORCH_VARIANT}
# Empty: the newest torch/torchvision pair on TORCH_INDEX. Set both to pin, e.g. 2.8.0 / 0.23.0.
ARG TORCH_VERSION=
ARG TORCHVISION_VERSION=
ARG UID=10001

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/labelq \
    PATH=/opt/labelq/bin:$PATH \
    HF_HOME=/models \
    TORCH_HOME=/models/torch \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HEALTH_NODE=cpu

# A venv that still sees the base's own packages, so a base with torch keeps its build.
RUN python3 -m venv --system-site-packages /opt/labelq \
 && if python -c "import torch, torchvision" 2>/dev/null; then \
        echo "torch from the base image: $(python -c 'import torch; print(torch.__version__)')"; \
    else \
        pip install --index-url "${TORCH_INDEX}" \
            "torch${TORCH_VERSION:+==${TORCH_VERSION}}" "torchvision${TORCHVISION_VERSION:+==${TORCHVISION_VERSION}}"; \
    fi \
 && python -c "import torch, torchvision; print(f'torch=={torch.__version__}'); print(f'torchvision=={torchvision.__version__}')" \
        > /opt/labelq/torch-constraints.txt \
 && cat /opt/labelq/torch-constraints.txt

WORKDIR /src
# Dependencies first (a layer that survives source edits): metadata plus an empty package.
COPY pyproject.toml README.md ./
RUN mkdir labelq && touch labelq/__init__.py \
 && pip install -c /opt/labelq/torch-constraints.txt ".[obstore]" \
 && pip uninstall -y labelq
COPY labelq ./labelq
RUN pip install --no-deps -c /opt/labelq/torch-constraints.txt . \
 && rm -rf /src/build /src/*.egg-info \
 && labelq --help > /dev/null

RUN groupadd --gid "${UID}" labelq \
 && useradd --create-home --uid "${UID}" --gid "${UID}" --shell /usr/sbin/nologin labelq \
 && mkdir -p /models \
 && chown labelq:labelq /models
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER ${UID}:${UID}
WORKDIR /home/labelq
VOLUME ["/models"]
# Prometheus metrics of a worker when LABELQ_METRICS_PORT is set (9100, 9101... one per device).
EXPOSE 9100

# Healthy when this container's worker answers `labelq ping` (HEALTH_NODE names its node
# prefix: cpu, gpu0, or the --name given). Model download and load happen in the start period.
HEALTHCHECK --interval=30s --timeout=40s --start-period=600s --retries=3 \
    CMD ["sh", "-c", "labelq ping --timeout 10 --node \"${HEALTH_NODE}@$(cat /proc/sys/kernel/hostname)\" > /dev/null || exit 1"]

ENTRYPOINT ["labelq"]
CMD ["worker", "--devices", "auto"]
