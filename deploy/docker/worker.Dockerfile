# syntax=docker/dockerfile:1
# ghcr.io/ftserve/worker: a CUDA training worker (`ftserve worker`) with the `cuda` extra: unsloth,
# bitsandbytes and the torch/transformers/trl pins they need (pyproject.toml's `cuda` extra).
#   docker build -f deploy/docker/worker.Dockerfile -t ghcr.io/ftserve/worker:0.1.0 .
# torch's wheels bring their own CUDA libraries; the base image's CUDA (13.x, like torch's default wheels)
# makes the NVIDIA container runtime refuse a host driver too old for them, with a clear message.
ARG CUDA_IMAGE=nvidia/cuda:13.1.1-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# gcc and the Python headers: Triton (under unsloth and bitsandbytes) compiles a small launcher at first use.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/ftserve
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core core
COPY api api
COPY scheduler scheduler
COPY gpu_worker gpu_worker
COPY cli cli
COPY adapter_agent adapter_agent
# The CLI's user verbs import the SDK, so `ftserve` needs it installed too.
COPY clients/python clients/python
RUN /opt/ftserve/bin/pip install ".[cuda]" ./clients/python \
    && /opt/ftserve/bin/python -c "import gpu_worker.worker, trl, peft, bitsandbytes"

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/ftserve ftserve \
    && install -d -o 10001 -g 10001 /var/lib/ftserve
COPY deploy/docker/healthcheck.py /usr/local/bin/ftserve-healthcheck
ENV PATH=/opt/ftserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/ftserve \
    HF_HOME=/home/ftserve/.cache/huggingface \
    FTSERVE_HOST=0.0.0.0 \
    FTSERVE_HEALTH_PORT=9100 \
    FTSERVE_DATA_DIR=/var/lib/ftserve
USER 10001:10001
WORKDIR /var/lib/ftserve
# 9100: /healthz, /readyz, /metrics (FTSERVE_HEALTH_PORT).
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=6s --start-period=60s --retries=3 CMD ["ftserve-healthcheck"]
# SIGTERM makes the worker checkpoint and re-queue its jobs (docs/scheduling.md): give it time to.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ftserve"]
CMD ["worker"]
