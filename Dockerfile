# One image for the sidecar, the control plane (and its migrate job) and the Streamlit dashboard:
# the service is chosen by the command, e.g. `gpuledger sidecar`, `gpuledger control-plane`,
# `gpuledger db upgrade`, `gpuledger dashboard`. vLLM runs from its own image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gpuledger ./gpuledger
COPY sidecar ./sidecar
COPY control_plane ./control_plane
COPY dashboard ./dashboard
COPY serving ./serving
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 GPULEDGER_HOST=0.0.0.0
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels gpuledger && rm -rf /wheels \
    && useradd --system --create-home --uid 10001 gpuledger
WORKDIR /app
# Alembic needs its scripts at run time for `gpuledger db upgrade`.
COPY alembic.ini ./
COPY migrations ./migrations
COPY deploy/policy.dev.yaml ./deploy/
RUN mkdir -p /app/data && chown gpuledger /app/data
USER gpuledger
ENTRYPOINT ["gpuledger"]
CMD ["sidecar"]
