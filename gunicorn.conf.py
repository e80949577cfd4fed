"""gunicorn settings of the gateway: `gunicorn 'gateway:create_app()'` reads this file from the working directory."""

import os
import sys

from gateway.config import ConfigError, load_settings


def _count(name, default):
    value = os.environ.get(name) or default
    if not value.isdigit() or not 1 <= int(value) <= 64:
        sys.exit(f"edm-gateway: configuration error: {name} must be a whole number from 1 to 64, got {value!r}")
    return int(value)


try:
    # Checked before any worker is forked: a bad setting stops the start with the variable's name.
    settings = load_settings()
except ConfigError as exc:
    sys.exit(f"edm-gateway: configuration error: {exc}")

bind = os.environ.get("GATEWAY_BIND") or "127.0.0.1:8000"
worker_class = "gthread"
workers = _count("GATEWAY_WORKERS", "2")
threads = _count("GATEWAY_THREADS", "8")
accesslog = "-"
errorlog = "-"
# A login may wait for its username's turn, then make a grant and two look-ups, each bounded by KEYCLOAK_TIMEOUT.
timeout = int(6 * settings.timeout) + 10
graceful_timeout = 10
keepalive = 5
# gunicorn 27 opens a control socket at one fixed path per user: several gateways on a host would collide.
control_socket_disable = True
