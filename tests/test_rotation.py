"""Refresh-token rotation (gateway/rotation.py) on both kinds of store, with a stand-in for Keycloak's grant:
concurrent refreshes of one token make one grant and share its answer, the same token within the grace gets the
same tokens, after it a reuse ends the session, and a refused or failed grant is never remembered as an answer."""

import threading
import time

import pytest

from gateway.errors import InvalidRefreshToken, RefreshReused, StoreUnavailable, UpstreamUnavailable
from gateway.grants import Tokens
from gateway.revocations import EndedSessions
from gateway.rotation import Rotation
from gateway.store.host import HostStore
from gateway.store.redis import RedisStore

SECRET = "the-client-secret"


@pytest.fixture(params=["host", "redis"])
def store(request, tmp_path):
    if request.param == "host":
        return HostStore(str(tmp_path / "state"))
    import redis

    return RedisStore(redis.Redis.from_url(request.getfixturevalue("redis_url")))


class Keycloak:
    """The refresh grant: new tokens for each token it has not seen, a refusal for one used before."""

    def __init__(self, delay=0.0):
        self.grants, self.used, self.delay, self.down = [], set(), delay, False

    def refresh(self, refresh_token):
        self.grants.append(refresh_token)
        time.sleep(self.delay)
        if self.down:
            raise UpstreamUnavailable("refresh grant: ConnectionError")  # never reached Keycloak
        if refresh_token in self.used:
            raise InvalidRefreshToken("refresh grant: HTTP 400 invalid_grant: Maximum allowed refresh token reuse "
                                      "exceeded")
        self.used.add(refresh_token)
        n = len(self.grants)
        now = int(time.time())
        return Tokens(f"access-{n}", f"refresh-{n}", 300, {"sub": "user-1", "sid": "sid-1", "iat": now,
                                                             "exp": now + 300}, 1800)


def rotation(store, grace=10):
    ended = EndedSessions(store)
    return Rotation(store, SECRET, grace, timeout=2, ended=ended), ended


def refresh(rotation_, keycloak, token):
    return rotation_.refresh(token, keycloak.refresh, lambda fields: Tokens(**fields))


def test_concurrent_refreshes_of_one_token_make_one_grant_and_get_the_same_tokens(store):
    keycloak = Keycloak(delay=0.2)
    rotations = [rotation(store)[0] for _ in range(2)]  # two gateways on one store
    answers, barrier = [], threading.Barrier(8)

    def tab(n):
        barrier.wait()
        answers.append(refresh(rotations[n % 2], keycloak, "refresh-0").refresh_token)

    threads = [threading.Thread(target=tab, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert keycloak.grants == ["refresh-0"] and answers == ["refresh-1"] * 8


def test_the_same_token_within_the_grace_gets_the_same_tokens_and_a_reuse_after_it_ends_the_session(store):
    keycloak = Keycloak()
    rotation_, ended = rotation(store, grace=1)
    first = refresh(rotation_, keycloak, "refresh-0")
    again = refresh(rotation_, keycloak, "refresh-0")
    assert (again.access_token, again.refresh_token, again.claims) == (first.access_token, "refresh-1", first.claims)
    assert keycloak.grants == ["refresh-0"]
    time.sleep(1.1)
    with pytest.raises(RefreshReused, match="used again"):
        refresh(rotation_, keycloak, "refresh-0")
    assert keycloak.grants == ["refresh-0", "refresh-0"]  # shown to Keycloak, which ends the session on a reuse
    assert ended.ended({"sid": "sid-1", "sub": "user-1"}) is True
    assert refresh(rotation_, keycloak, "refresh-1").refresh_token == "refresh-3"  # the store is not what refuses it


def test_no_answer_is_handed_out_again_once_its_session_has_ended(store):
    keycloak = Keycloak()
    rotation_, ended = rotation(store)
    refresh(rotation_, keycloak, "refresh-0")
    ended.end_sid("sid-1", "test")
    with pytest.raises(InvalidRefreshToken, match="session has ended"):
        refresh(rotation_, keycloak, "refresh-0")
    assert keycloak.grants == ["refresh-0"]


def test_a_refused_or_failed_grant_is_not_kept(store):
    keycloak = Keycloak()
    rotation_, _ = rotation(store)
    keycloak.down = True
    with pytest.raises(UpstreamUnavailable):
        refresh(rotation_, keycloak, "refresh-0")
    keycloak.down = False
    assert refresh(rotation_, keycloak, "refresh-0").refresh_token == "refresh-2"  # asked again, not a reuse
    keycloak.used.add("refresh-x")  # Keycloak has seen this token before the gateway did
    with pytest.raises(InvalidRefreshToken):
        refresh(rotation_, keycloak, "refresh-x")
    with pytest.raises(InvalidRefreshToken) as refused:
        refresh(rotation_, keycloak, "refresh-x")
    assert not isinstance(refused.value, RefreshReused)  # never spent through the gateway: Keycloak's own refusal


class FailingOnce(HostStore):
    """A store whose first write of a key with `prefix` fails, as Redis does in a failover."""

    def __init__(self, path, prefix):
        super().__init__(path)
        self.prefix, self.failed = prefix, False

    def put_many(self, entries):
        if any(key.startswith(self.prefix) for key, _, _ in entries) and not self.failed:
            self.failed = True
            raise StoreUnavailable("set: ConnectionError")
        return super().put_many(entries)


@pytest.mark.parametrize("prefix", ["grace:", "rotation:"])
def test_a_store_that_fails_after_the_grant_still_hands_the_user_the_new_tokens(tmp_path, prefix):
    store, keycloak = FailingOnce(str(tmp_path / "state"), prefix), Keycloak()
    rotation_, _ = rotation(store)
    assert refresh(rotation_, keycloak, "refresh-0").refresh_token == "refresh-1"
    assert store.failed and keycloak.grants == ["refresh-0"]
    assert refresh(rotation_, keycloak, "refresh-1").refresh_token == "refresh-2"  # and the user goes on


class KeepingTheFirstOnly(HostStore):
    """A store that keeps the first entry of a write of several and fails on the next, as a Redis connection cut
    between the pipeline's two commands does."""

    def put_many(self, entries):
        self.put(*entries[0])
        raise StoreUnavailable("pipeline: ConnectionError")


def test_a_token_whose_answer_was_kept_but_not_its_mark_gets_that_answer_again_at_once(tmp_path):
    """The other tab does not wait for the in-flight mark to lapse and then show Keycloak the spent token (a reuse,
    which would end the session): it finds the kept answer."""
    store, keycloak = KeepingTheFirstOnly(str(tmp_path / "state")), Keycloak()
    rotation_, _ = rotation(store)
    first = refresh(rotation_, keycloak, "refresh-0")
    began = time.monotonic()
    again = refresh(rotation_, keycloak, "refresh-0")
    assert (first.access_token, first.refresh_token) == (again.access_token, again.refresh_token) == (
        "access-1", "refresh-1")
    assert keycloak.grants == ["refresh-0"]
    assert time.monotonic() - began < 1  # not the mark's 5 s


def test_the_store_holds_neither_token(tmp_path):
    store = HostStore(str(tmp_path / "s"))
    refresh(rotation(store)[0], Keycloak(), "REFRESH-ZERO")
    with open(tmp_path / "s" / HostStore.FILE, "rb") as file, open(f"{tmp_path}/s/{HostStore.FILE}-wal", "rb") as wal:
        raw = file.read() + wal.read()
    assert b"REFRESH-ZERO" not in raw and b"refresh-1" not in raw and b"access-1" not in raw
