"""Redis, the store that every gateway process on every host shares when `GATEWAY_REDIS_URL` is set: the rate
limits' counts (gateway/limits.py) and the one-password-grant-per-username rule (gateway/userlock.py).

The only module that builds a Redis client. Every call is bounded (`STORE_TIMEOUT`, at most KEYCLOAK_TIMEOUT) and
retried once at once, so a connection that Redis closed while it restarted costs no answer; a failure is a
StoreUnavailable (the documented 503), never a 500 and never a check skipped. Nothing is cached across a failure,
so the gateway recovers by itself when Redis is back.
"""

import logging
from contextlib import contextmanager

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.errors import StoreUnavailable

log = logging.getLogger(__name__)

# Seconds per Redis call (connect and read); Redis answers in well under a millisecond when it is up.
STORE_TIMEOUT = 1.0


@contextmanager
def translated(operation):
    """Turn what redis-py raises into StoreUnavailable, naming the operation (the reason goes to logs only)."""
    try:
        yield
    except redis.RedisError as exc:
        raise StoreUnavailable(f"redis {operation}: {type(exc).__name__}: {exc}") from exc


class Store:
    """A connection pool to the Redis of `GATEWAY_REDIS_URL`, shared by the limits and the username turns."""

    def __init__(self, settings):
        timeout = min(STORE_TIMEOUT, settings.timeout)
        self.client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
            # One immediate retry: after a Redis restart each pooled connection fails once before it reconnects.
            retry=Retry(NoBackoff(), 1), health_check_interval=30)
        self.pool = self.client.connection_pool

    def ready(self):
        """Whether Redis answers now (no cache: it is one round trip)."""
        try:
            with translated("ping"):
                return self.client.ping() is True
        except StoreUnavailable as exc:
            log.warning("not ready: %s", exc.reason)
            return False


def connect(settings):
    """The Store of `GATEWAY_REDIS_URL`, or None when the gateway keeps its state per host."""
    return Store(settings) if settings.redis_url else None
