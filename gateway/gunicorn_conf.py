"""gunicorn settings of the gateway, shipped in the package: `gunicorn -c python:gateway.gunicorn_conf`.

The same settings wherever the gateway runs (`make run`, the container image, a `pip install`); the
checkout's `gunicorn.conf.py` only points here, for a bare `gunicorn 'gateway:create_app()'`.
"""

import sys

from gateway import create_app
from gateway.config import ConfigError, load_settings

try:
    # Everything a worker will build, built once before any is forked: a start that cannot work stops here,
    # with the variable or cause named, instead of workers failing one after another.
    settings = load_settings()
    create_app()
except ConfigError as exc:
    sys.exit(f"edm-gateway: configuration error: {exc}")

wsgi_app = "gateway:create_app()"
bind = settings.bind
worker_class = "gthread"
workers = settings.workers
threads = settings.threads
accesslog = "-"
errorlog = "-"
# A login may wait for its username's turn, then make a grant and two look-ups, each bounded by KEYCLOAK_TIMEOUT.
timeout = int(6 * settings.timeout) + 10
graceful_timeout = 10
keepalive = 5
# gunicorn 27 opens a control socket at one fixed path per user: several gateways on a host would collide.
control_socket_disable = True
