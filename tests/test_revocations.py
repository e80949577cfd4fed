"""Ended sessions (gateway/revocations.py) on both kinds of store: seen by another process's mirror within the
poll interval, ended by sid or by user, forgotten when no token of the session can live any more, and a store that
cannot be read is a 503 once the mirror is too old to trust, never a check skipped."""

import time

import pytest

from gateway.errors import StoreUnavailable
from gateway.revocations import POLL_SECONDS, STALE_SECONDS, EndedSessions
from gateway.store.host import HostStore
from gateway.store.redis import RedisStore


class Clocks:
    """The wall clock and the monotonic clock of one process, moved on by the test."""

    def __init__(self):
        self.now, self.mono = time.time(), 1000.0

    def wall(self):
        return self.now

    def monotonic(self):
        return self.mono

    def advance(self, seconds):
        self.now += seconds
        self.mono += seconds


@pytest.fixture(params=["host", "redis"])
def store(request, tmp_path):
    if request.param == "host":
        return HostStore(str(tmp_path / "state"))
    import redis

    return RedisStore(redis.Redis.from_url(request.getfixturevalue("redis_url")))


def token(sid="sid-1", sub="user-1", iat=None, **claims):
    iat = time.time() if iat is None else iat
    return {"sid": sid, "sub": sub, "iat": iat, "exp": iat + 300, **claims}


def test_a_session_ended_by_one_gateway_is_ended_on_another_within_the_poll(store):
    here, there = Clocks(), Clocks()
    one = EndedSessions(store, clock=here.wall, monotonic=here.monotonic)
    other = EndedSessions(store, clock=there.wall, monotonic=there.monotonic)
    assert other.ended(token()) is False  # read once: the mirror is fresh now
    one.end_sid("sid-1", "test")
    assert one.ended(token()) is True  # at once where it was ended
    there.advance(POLL_SECONDS)
    assert other.ended(token()) is True
    assert other.ended(token(sid="sid-2")) is False and other.ended(token(sid=None)) is False


def test_a_user_ended_without_a_sid_loses_the_sessions_begun_before(store):
    clocks = Clocks()
    ended = EndedSessions(store, clock=clocks.wall, monotonic=clocks.monotonic)
    before = token(sid="a", iat=clocks.now - 10)
    ended.end_sub("user-1", "test")
    assert ended.ended(before) is True
    assert ended.ended(token(sid="b", iat=clocks.now + 1)) is False  # a login after the end
    assert ended.ended(token(sid="c", iat=clocks.now + 1, auth_time=clocks.now - 10)) is True  # refreshed since
    assert ended.ended(token(sid="a", sub="user-2", iat=clocks.now - 10)) is False


def test_a_record_lives_as_long_as_a_token_of_the_session_can_and_no_longer(store):
    clocks = Clocks()
    ended = EndedSessions(store, clock=clocks.wall, monotonic=clocks.monotonic)
    ended.learn({"iat": 0, "exp": 600})  # the realm's tokens live 10 minutes
    ended.end_sid("sid-1", "test")
    clocks.advance(600 + 30 - 1)  # the lifetime and the verification's leeway
    assert ended.ended(token()) is True
    clocks.advance(2)
    assert ended.ended(token()) is False
    fresh = Clocks()
    fresh.advance(600 + 30 + 1)
    assert EndedSessions(store, clock=fresh.wall, monotonic=fresh.monotonic).ended(token()) is False


def test_a_process_that_has_seen_no_token_yet_writes_records_as_long_as_the_longest_token_seen(store):
    clocks = Clocks()
    seasoned = EndedSessions(store, clock=clocks.wall, monotonic=clocks.monotonic)
    seasoned.learn({"iat": 0, "exp": 1800})  # the realm's tokens live 30 minutes
    fresh = EndedSessions(store, clock=clocks.wall, monotonic=clocks.monotonic)  # a worker just started
    fresh.end_sid("sid-1", "a back-channel logout")
    clocks.advance(1800 + 30 - 1)
    assert fresh.ended(token()) is True and seasoned.ended(token()) is True
    assert EndedSessions(store, clock=clocks.wall, monotonic=clocks.monotonic).ended(token()) is True


def test_a_new_process_reads_every_session_ended_so_far(store):
    EndedSessions(store).end_sid("sid-1", "test")
    EndedSessions(store).end_sub("user-9", "test")
    later = EndedSessions(store)
    assert later.ended(token()) is True and later.ended(token(sid="x", sub="user-9", iat=0)) is True


class FailingStore:
    """A store whose feed can be read until the test says otherwise."""

    def __init__(self, inner):
        self.inner, self.down = inner, False

    def since(self, feed, cursor):
        if self.down:
            raise StoreUnavailable("redis xrange: ConnectionError")
        return self.inner.since(feed, cursor)

    def append(self, *args):
        return self.inner.append(*args)


def test_a_store_that_cannot_be_read_is_a_503_once_the_mirror_is_too_old(store):
    clocks = Clocks()
    failing = FailingStore(store)
    ended = EndedSessions(failing, clock=clocks.wall, monotonic=clocks.monotonic)
    assert ended.ended(token()) is False
    failing.down = True
    clocks.advance(POLL_SECONDS)
    assert ended.ended(token()) is False  # due, but not too old: the last read still counts
    clocks.advance(STALE_SECONDS)
    with pytest.raises(StoreUnavailable):
        ended.ended(token())  # never a check skipped
    failing.down = False
    assert ended.ended(token()) is False  # back by itself
