# One image for the sidecar, the control plane (and its migrate job) and the Streamlit dashboard:
# the command picks the service: `gpuledger sidecar`, `gpuledger control-plane`,
# `gpuledger db upgrade`, `gpuledger dashboard`. vLLM runs from its own image.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 GPULEDGER_HOST=0.0.0.0
WORKDIR /app
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p gpuledger sidecar control_plane dashboard serving \
    && pip install . && pip uninstall -y gpuledger
COPY gpuledger ./gpuledger
COPY sidecar ./sidecar
COPY control_plane ./control_plane
COPY dashboard ./dashboard
COPY serving ./serving
# The control plane finds Alembic's scripts next to its package (control_plane/../migrations),
# so the code stays in /app as an editable install rather than in site-packages.
COPY migrations ./migrations
COPY alembic.ini ./
COPY deploy/policy.dev.yaml ./deploy/policy.dev.yaml
RUN pip install --no-deps -e . \
    && useradd --system --create-home --uid 10001 gpuledger \
    && mkdir -p /app/data && chown gpuledger /app/data
USER gpuledger
ENTRYPOINT ["gpuledger"]
CMD ["sidecar"]
