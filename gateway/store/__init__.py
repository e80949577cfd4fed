"""The one room for the gateway's cross-request state: a small key-value store with expiries, leases and
append-only feeds, on the host (every worker process of one host) or in Redis (every process of every host).

    HostStore    gateway/store/host.py    SQLite (WAL) in a per-user 0700 directory: the host's workers
    RedisStore   gateway/store/redis.py   GATEWAY_REDIS_URL: redis://, rediss:// or redis+sentinel://

Both answer the same calls, and tests/test_store.py runs every test on each:
    get(key)                                 the live value, or None
    put(key, value, ttl, only_existing=False) store for `ttl` seconds (only over a live entry: True if stored)
    put_many(entries)                        store each (key, value, ttl) of `entries` in one write (one round
                                             trip); all or none on the host, but on Redis a failure may have
                                             stored the first ones: callers write them in the order that
                                             leaves any prefix safe (rotation: the answer, then the mark)
    put_new(key, value, ttl)                 store only if absent: True for the one caller that stored it
    take(key)                                the live value, removed in the same step (one caller gets it)
    delete(key)
    lease(key, ttl) -> token | None          hold `key` for `ttl` seconds if it is free (or expired)
    renew(key, token, ttl) -> bool           extend a lease still held under `token`
    release(key, token)                      give it back, if still held under `token`
    append(feed, value, retention)           add to a feed and keep it `retention` seconds (a feed's entries
                                             share one retention: an append drops what is older than its own)
    since(feed, cursor) -> (cursor, values)  the entries after `cursor` (None: from the oldest kept)
    ready() -> bool

Callers own their key prefixes: BFF sessions and their refresh leases (`gateway/sessions.py`), used login states
(`gateway/bff.py`), ended sessions (the `ended` feed, `gateway/revocations.py`), seen logout-token ids
(`gateway/backchannel.py`), rotation grace answers (`gateway/rotation.py`). Rate-limit counts (`limits`' storage) and
the per-username login turns keep mechanisms of their own; with Redis they share this store's client (`redis`).

Any failure of the store is StoreUnavailable (the documented 503), never a 500 and never a check skipped; nothing
is cached across a failure, so the gateway recovers by itself when the store is back.
"""

from contextlib import contextmanager

from gateway.errors import StoreUnavailable


@contextmanager
def translated(operation, failures=None):
    """Turn what the store's library raises into StoreUnavailable naming the operation (the reason goes to logs
    only); `failures` defaults to redis-py's errors."""
    if failures is None:
        import redis

        failures = redis.RedisError
    try:
        yield
    except failures as exc:
        raise StoreUnavailable(f"redis {operation}: {type(exc).__name__}: {exc}") from exc


def connect(settings):
    """The store of this gateway: the Redis of GATEWAY_REDIS_URL, else the host's file."""
    if settings.redis_url:
        from gateway.store.redis import RedisStore

        return RedisStore.from_settings(settings)
    from gateway.store.host import HostStore

    return HostStore(settings.state_dir, timeout=settings.timeout)
