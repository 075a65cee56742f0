# syntax=docker/dockerfile:1
# ghcr.io/ftserve/api: the control plane, one image for `ftserve api` and `ftserve scheduler` (CMD picks).
# The package's default dependencies only: no torch, no ML stack (pyproject.toml).
#   docker build -f deploy/docker/api.Dockerfile -t ghcr.io/ftserve/api:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/ftserve
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
RUN /opt/ftserve/bin/pip install . ./clients/python \
    && /opt/ftserve/bin/python -c "import api.main, scheduler.main, cli.main; import sys; assert 'torch' not in sys.modules"

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/ftserve ftserve \
    && install -d -o 10001 -g 10001 /var/lib/ftserve
COPY --from=build /opt/ftserve /opt/ftserve
COPY deploy/docker/healthcheck.py /usr/local/bin/ftserve-healthcheck
ENV PATH=/opt/ftserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FTSERVE_HOST=0.0.0.0 \
    FTSERVE_DATA_DIR=/var/lib/ftserve \
    FTSERVE_INFERENCE_ENABLED=false
USER 10001:10001
WORKDIR /var/lib/ftserve
# 8000: the API (FTSERVE_PORT); 9100: the scheduler's /healthz, /readyz, /metrics (FTSERVE_HEALTH_PORT).
EXPOSE 8000 9100
HEALTHCHECK --interval=15s --timeout=6s --start-period=60s --retries=3 CMD ["ftserve-healthcheck"]
ENTRYPOINT ["ftserve"]
CMD ["api"]
