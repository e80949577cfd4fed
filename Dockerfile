# The gateway image: gunicorn with the settings shipped in the package (gateway/gunicorn_conf.py), as a non-root user.
# Build stage: a virtualenv with the pinned requirements and the package; the runtime stage copies only that.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.txt ./
# Wheels only: every pin has one for linux amd64 and arm64, so no compiler is ever needed.
RUN pip install --only-binary=:all: -r requirements.txt
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
RUN pip install --no-deps .

FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_BIND=0.0.0.0:8000
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Numeric, so that runtimes enforcing a non-root user (Kubernetes runAsNonRoot) can check it.
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]
CMD ["gunicorn", "-c", "python:gateway.gunicorn_conf"]
