"""gunicorn settings of the gateway, shipped in the package: `gunicorn -c python:gateway.gunicorn_conf`.

The same settings wherever the gateway runs (`make run`, the container image, a `pip install`); the
checkout's `gunicorn.conf.py` only points here, for a bare `gunicorn 'gateway:create_app()'`.
"""

import gc
import glob
import logging
import os
import shutil
import sys
import tempfile
from logging.config import dictConfig

from gunicorn import glogging

import gateway.config  # (not `from gateway import config`: gunicorn would read `config` as its own setting)
from gateway.config import GUNICORN_SETTINGS, ConfigError, load_settings  # (the package imports nothing else)

gateway.config.gunicorn_settings = True  # in this master, and so in every worker forked from it
try:
    settings = load_settings()
except ConfigError as exc:
    sys.exit(f"edm-gateway: configuration error: {exc}")

# prometheus_client decides when it is first imported whether it runs in multiprocess mode, so its directory is
# set before anything imports it, and wiped: counts of an earlier run must not be summed into this one.
if settings.metrics_dir:
    metrics_dir, own_metrics_dir = settings.metrics_dir, False
    os.makedirs(metrics_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(metrics_dir, "*.db")):
        os.remove(stale)
else:
    metrics_dir, own_metrics_dir = tempfile.mkdtemp(prefix="edm-gateway-metrics-"), True
os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

from gateway import create_app  # noqa: E402 - after the metrics directory is set
from gateway.limits import per_process_warning  # noqa: E402

try:
    # Everything a worker will build, built once before any is forked: a start that cannot work stops here,
    # with the variable or cause named, instead of workers failing one after another.
    create_app()
except ConfigError as exc:
    sys.exit(f"edm-gateway: configuration error: {exc}")


class JsonLogger(glogging.Logger):
    """gunicorn's own log lines as JSON through the gateway's handler; no access line, as the app writes one line
    per request itself (with its request id and outcome)."""

    def setup(self, cfg):
        super().setup(cfg)
        from gateway.logs import logging_config

        dictConfig(logging_config())
        self._access_log_enabled = False  # also spares gunicorn building the access line's fields per request


def post_fork(server, worker):
    """Tell the app this worker builds next how many threads serve it, however gunicorn was told (`--threads`, a
    config file, GATEWAY_THREADS): the bound on logins waiting for one username counts from it."""
    if worker.cfg.preload_app:
        from gunicorn.errors import AppImportError  # one line, and gunicorn stops

        raise AppImportError("edm-gateway: --preload is not supported (each worker builds its own app, once gunicorn "
                             f"told it its thread count): start it with {GUNICORN_SETTINGS}, without --preload")
    gateway.config.worker_threads = worker.cfg.threads


def post_worker_init(worker):
    """Move the app this worker just built out of the collector's reach: a full collection then walks only what
    requests allocate, instead of pausing every thread of the worker for the whole heap (the open loop's tail)."""
    gc.freeze()


def when_ready(server):
    """Warn once the arbiter knows its real worker count (`--workers`, a config file or GATEWAY_WORKERS)."""
    warning = per_process_warning(settings, server.cfg.workers)
    if warning:
        logging.getLogger("gateway.limits").warning(warning)


def child_exit(server, worker):
    """A worker is gone: its live series must not be read any more."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if own_metrics_dir:
        shutil.rmtree(metrics_dir, ignore_errors=True)


wsgi_app = "gateway:create_app()"
bind = settings.bind
worker_class = "gthread"
workers = settings.workers
threads = settings.threads
logger_class = JsonLogger
errorlog = "-"
# A login may wait for its username's turn, then make a grant and two look-ups, each bounded by KEYCLOAK_TIMEOUT.
timeout = int(6 * settings.timeout) + 10
graceful_timeout = 10
keepalive = 5
# gunicorn 27 opens a control socket at one fixed path per user: several gateways on a host would collide.
control_socket_disable = True
# gunicorn answers HTML before the gateway sees a request that breaks these limits, so they sit above the gateway's
# own: an Authorization header of up to 16 KiB (twice the longest token the gateway reads; it refuses longer
# tokens itself, with its JSON 401), a request line of up to 8190 bytes (gunicorn's maximum; paths are answered
# 404 by the gateway), and 100 header fields (a browser sends about 20).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 16384
