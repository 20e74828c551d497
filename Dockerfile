# fedsim in a container: CPU torch, the package installed, `fedsim` as the entrypoint.
#   docker build -t fedsim .
#   docker run --rm -v "$PWD/runs:/app/runs" fedsim run scenarios/noniid.yaml
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 \
    FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1

RUN useradd --create-home --uid 49999 app
WORKDIR /app

# CPU-only torch first, so that no CUDA build is pulled in.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY pyproject.toml README.md ./
COPY fedsim fedsim
COPY strategies strategies
COPY attacks attacks
COPY defenses defenses
COPY scenarios scenarios
RUN pip install . && chown -R app /app

USER app
ENTRYPOINT ["fedsim"]
CMD ["--help"]
