"""The store in Redis (GATEWAY_REDIS_URL): every gateway process on every host shares it, and with
`redis+sentinel://` it follows the primary through a Sentinel failover.

The only module that builds a Redis client; the rate limits' counts and the login turns use this one (`redis`).
Every call is bounded (CALL_TIMEOUT, at most KEYCLOAK_TIMEOUT) and retried once at once: after a Redis restart or
a failover each pooled connection fails once, then reconnects (through the Sentinels, to the new primary). Keys
live under `edm-gateway:kv:` and feeds are streams under `edm-gateway:feed:`; every script touches one key, so
none would straddle hash slots.
"""

import logging
import secrets

from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

import redis
from gateway.config import parse_redis_url
from gateway.errors import StoreUnavailable
from gateway.store import translated

log = logging.getLogger(__name__)

CALL_TIMEOUT = 1.0  # seconds per Redis call (connect and read); Redis answers in well under a millisecond when up
FEED_BATCH = 1000

# Each script compares before it acts, so a lease that expired and was taken by another is never touched.
_RENEW = ("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end "
          "return 0")
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
# Redis's own clock trims the feed, so the hosts' clocks never matter.
_APPEND = ("local now = redis.call('time') "
           "local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[2]) "
           "return redis.call('xadd', KEYS[1], 'minid', math.max(oldest, 0), '*', 'v', ARGV[1])")


def client(settings):
    """A redis-py client for GATEWAY_REDIS_URL: a plain URL's server, or the primary the Sentinels name."""
    timeout = min(CALL_TIMEOUT, settings.timeout)
    options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "health_check_interval": 30,
               "retry": Retry(NoBackoff(), 1)}
    address = parse_redis_url(settings.redis_url)
    if address.sentinels is None:
        return redis.Redis.from_url(settings.redis_url, **options)
    auth = {name: value for name, value in (("username", address.username), ("password", address.password))
            if value}
    sentinel = Sentinel(address.sentinels, sentinel_kwargs={"socket_timeout": timeout,
                                                           "socket_connect_timeout": timeout, **auth})
    return sentinel.master_for(address.service, db=address.db, **auth, **options)


class RedisStore:
    """The store of every gateway sharing one Redis (`gateway.store` has the contract)."""

    PREFIX = "edm-gateway:kv:"
    FEEDS = "edm-gateway:feed:"
    shared_across_hosts = True

    def __init__(self, redis_client):
        self.redis = redis_client
        self._renew = redis_client.register_script(_RENEW)
        self._release = redis_client.register_script(_RELEASE)
        self._append = redis_client.register_script(_APPEND)

    @classmethod
    def from_settings(cls, settings):
        return cls(client(settings))

    @property
    def client(self):
        """The redis-py client (the login turns' name for it)."""
        return self.redis

    @property
    def pool(self):
        """Its connection pool, which the rate limits' storage shares."""
        return self.redis.connection_pool

    @staticmethod
    def _ms(seconds):
        return max(1, int(seconds * 1000))

    def get(self, key):
        with translated("get"):
            return self.redis.get(self.PREFIX + key)

    def put(self, key, value, ttl, only_existing=False):
        with translated("set"):
            return bool(self.redis.set(self.PREFIX + key, value, px=self._ms(ttl), xx=only_existing))

    def put_many(self, entries):
        with translated("set"):
            pipe = self.redis.pipeline(transaction=False)  # one round trip; each SET is atomic on its own
            for key, value, ttl in entries:
                pipe.set(self.PREFIX + key, value, px=self._ms(ttl))
            pipe.execute()

    def put_new(self, key, value, ttl):
        with translated("set nx"):
            return bool(self.redis.set(self.PREFIX + key, value, px=self._ms(ttl), nx=True))

    def take(self, key):
        with translated("getdel"):
            return self.redis.getdel(self.PREFIX + key)

    def delete(self, key):
        with translated("del"):
            self.redis.delete(self.PREFIX + key)

    def lease(self, key, ttl):
        token = secrets.token_hex(16)
        return token if self.put_new(key, token.encode(), ttl) else None

    def renew(self, key, token, ttl):
        with translated("renew"):
            return self._renew(keys=[self.PREFIX + key], args=[token, self._ms(ttl)]) == 1

    def release(self, key, token):
        with translated("release"):
            self._release(keys=[self.PREFIX + key], args=[token])

    def append(self, feed, value, retention):
        with translated("xadd"):
            self._append(keys=[self.FEEDS + feed], args=[value, self._ms(retention)])

    def since(self, feed, cursor):
        values = []
        with translated("xrange"):
            while True:
                entries = self.redis.xrange(self.FEEDS + feed, f"({cursor}" if cursor else "-", "+",
                                            count=FEED_BATCH)
                for entry_id, fields in entries:
                    cursor = entry_id.decode()
                    values.append(fields[b"v"])
                if len(entries) < FEED_BATCH:
                    return cursor, values

    def ready(self):
        """Whether Redis answers now (no cache: it is one round trip)."""
        try:
            with translated("ping"):
                return self.redis.ping() is True
        except StoreUnavailable as exc:
            log.warning("not ready: %s", exc.reason)
            return False
