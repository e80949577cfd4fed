"""gunicorn settings of the gateway, shipped in the package: `gunicorn -c python:gateway.gunicorn_conf`.

The same settings wherever the gateway runs (`make run`, the container image, a `pip install`); the
checkout's `gunicorn.conf.py` only points here, for a bare `gunicorn 'gateway:create_app()'`.
"""

import logging
import sys

from gateway import create_app
from gateway.config import ConfigError, load_settings
from gateway.limits import per_process_warning

try:
    # Everything a worker will build, built once before any is forked: a start that cannot work stops here,
    # with the variable or cause named, instead of workers failing one after another.
    settings = load_settings()
    create_app()
except ConfigError as exc:
    sys.exit(f"edm-gateway: configuration error: {exc}")
if per_process_warning(settings):
    logging.getLogger("gateway.limits").warning(per_process_warning(settings))

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
# gunicorn answers HTML before the gateway sees a request that breaks these limits, so they sit above the gateway's
# own: an Authorization header of up to 16 KiB (twice the longest token the gateway reads; it refuses longer
# tokens itself, with its JSON 401), a request line of up to 8190 bytes (gunicorn's maximum; paths are answered
# 404 by the gateway), and 100 header fields (a browser sends about 20).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 16384
