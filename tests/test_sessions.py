"""BFF sessions (gateway/sessions.py) on both kinds of store (the host's SQLite file and a real redis-server): what
the session secret seals, refresh-once under threads of one process and processes of one host, requests that go
on while another refreshes, a failed refresh remembered, and a Keycloak session's end reaching its records."""

import multiprocessing
import threading
import time

import pytest

from gateway.errors import (
    InvalidRefreshToken,
    NotLoggedIn,
    SessionEnded,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.grants import Tokens
from gateway.sessions import Sessions
from gateway.store.host import HostStore
from gateway.store.redis import RedisStore

SECRET = "a-session-secret-of-at-least-32-characters"


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


@pytest.fixture(params=["host", "redis"])
def store(request, tmp_path):
    if request.param == "host":
        return HostStore(str(tmp_path / "state"), timeout=2)
    import redis

    return RedisStore(redis.Redis.from_url(request.getfixturevalue("redis_url")))  # emptied for the test


def tokens(access="access-1", refresh="refresh-1", expires_in=300, refresh_expires_in=1800, sub="user-1"):
    return Tokens(access, refresh, expires_in, {"sub": sub, "preferred_username": "someone"}, refresh_expires_in)


def test_the_store_holds_neither_tokens_nor_the_cookie(tmp_path):
    store = HostStore(str(tmp_path / "s"))
    sessions = Sessions(store, SECRET, timeout=2)
    cookie, _ = sessions.create(tokens(access="ACCESS-TOKEN-VALUE", refresh="REFRESH-TOKEN-VALUE"), "sid-1")
    with open(tmp_path / "s" / HostStore.FILE, "rb") as file, open(f"{tmp_path}/s/{HostStore.FILE}-wal", "rb") as wal:
        raw = file.read() + wal.read()
    for secret in (b"ACCESS-TOKEN-VALUE", b"REFRESH-TOKEN-VALUE", cookie.encode(), b"user-1", b"sid-1"):
        assert secret not in raw
    assert sessions.find(cookie).access_token == "ACCESS-TOKEN-VALUE"


def test_a_record_is_bound_to_its_key_and_secret(tmp_path):
    store = HostStore(str(tmp_path / "s"))
    sessions = Sessions(store, SECRET, timeout=2)
    cookie, _ = sessions.create(tokens(), "sid-1")
    other_cookie, _ = sessions.create(tokens(sub="user-2"), "sid-2")
    key, other_key = sessions.sealer.key("session", cookie), sessions.sealer.key("session", other_cookie)
    store.put(other_key, store.get(key), 60)  # a record moved under another key does not open there
    with pytest.raises(NotLoggedIn):
        sessions.find(other_cookie)
    with pytest.raises(NotLoggedIn):  # nor with another secret
        Sessions(store, SECRET + "-rotated", timeout=2).find(cookie)
    sealed = bytearray(store.get(key))
    sealed[-1] ^= 1
    store.put(key, bytes(sealed), 60)
    with pytest.raises(NotLoggedIn):
        sessions.find(cookie)


def test_a_new_secret_reads_the_sessions_of_the_previous_one(tmp_path):
    store = HostStore(str(tmp_path / "s"))
    cookie, _ = Sessions(store, SECRET, timeout=2).create(tokens(), "sid-1")
    rotated = Sessions(store, SECRET + "-new-one", timeout=2, previous_secrets=(SECRET,))
    assert rotated.find(cookie).sub == "user-1"
    new_cookie, _ = rotated.create(tokens(sub="user-2"), "sid-2")
    with pytest.raises(NotLoggedIn):  # written with the new secret only
        Sessions(store, SECRET, timeout=2).find(new_cookie)


def test_the_documented_two_step_rollout_of_a_new_secret_logs_nobody_out_on_any_replica(tmp_path):
    store, new = HostStore(str(tmp_path / "s")), SECRET + "-new-one"
    before, _ = Sessions(store, SECRET, timeout=2).create(tokens(expires_in=0), "sid-1")  # due for a refresh
    step_one = Sessions(store, SECRET, timeout=2, previous_secrets=(new,))  # old current, new accepted
    step_two = Sessions(store, new, timeout=2, previous_secrets=(SECRET,))  # new current, old accepted
    refreshed = step_two.current(before, lambda _: tokens(access="access-2"))
    assert refreshed.access_token == "access-2"
    assert step_one.find(before).access_token == "access-2"  # a replica still at step one reads it
    begun_late, _ = step_two.create(tokens(sub="user-2"), "sid-2")
    assert step_one.find(begun_late).sub == "user-2"
    assert Sessions(store, new, timeout=2).find(begun_late).sub == "user-2"  # the old secret gone: still in


def test_refresh_happens_once_among_threads_and_ends_a_refused_session(store):
    clock = Clock()
    sessions = Sessions(store, SECRET, timeout=2, clock=clock)
    cookie, session = sessions.create(tokens(expires_in=300), "sid")
    calls = []

    def refresh(refresh_token):
        calls.append(refresh_token)
        time.sleep(0.2)  # long enough for every other thread to find the lease taken
        return tokens(access=f"access-{len(calls) + 1}", refresh=f"refresh-{len(calls) + 1}")

    assert sessions.current(cookie, refresh).access_token == "access-1"  # far from expiry: no refresh
    clock.now += 298  # 2 s left: too little to go on with, so the others wait for the one refresh
    seen, barrier = [], threading.Barrier(10)

    def use():
        barrier.wait()
        seen.append(sessions.current(cookie, refresh).access_token)

    threads = [threading.Thread(target=use) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["refresh-1"] and seen == ["access-2"] * 10

    clock.now += 299

    def refused(refresh_token):
        raise InvalidRefreshToken("refresh grant: HTTP 400 invalid_grant: Session not active")

    with pytest.raises(SessionEnded):
        sessions.current(cookie, refused)
    with pytest.raises(NotLoggedIn):
        sessions.find(cookie)


def test_requests_whose_token_still_lives_do_not_wait_for_anothers_refresh(store):
    clock = Clock()
    sessions = Sessions(store, SECRET, timeout=2, clock=clock)
    cookie, _ = sessions.create(tokens(expires_in=300), "sid")
    clock.now += 280  # 20 s left: due for a refresh, but plenty to go on with
    started, go_on = threading.Event(), threading.Event()

    def slow_refresh(refresh_token):
        started.set()
        go_on.wait(10)
        return tokens(access="access-2")

    holder = threading.Thread(target=lambda: sessions.current(cookie, slow_refresh))
    holder.start()
    assert started.wait(5)
    began = time.monotonic()
    answers = [sessions.current(cookie, slow_refresh).access_token for _ in range(6)]
    waited = time.monotonic() - began
    go_on.set()
    holder.join()
    print(f"six requests during another's refresh took {waited:.3f} s")
    assert answers == ["access-1"] * 6  # each went on with its own token at once, none refreshed again
    assert sessions.find(cookie).access_token == "access-2"


def test_a_failed_refresh_is_not_tried_again_at_once_and_a_dying_token_times_out(store):
    clock = Clock()
    sessions = Sessions(store, SECRET, timeout=0.2, clock=clock)
    cookie, _ = sessions.create(tokens(expires_in=300), "sid")
    clock.now += 280  # 20 s left: inside the margin, still valid
    calls = []

    def down(refresh_token):
        calls.append(refresh_token)
        raise UpstreamUnavailable("refresh grant: ConnectionError")

    assert sessions.current(cookie, down).access_token == "access-1"
    assert sessions.current(cookie, down).access_token == "access-1"
    assert len(calls) == 1  # remembered: the second request did not try again at once
    clock.now += 6  # past the retry pause
    assert sessions.current(cookie, down).access_token == "access-1" and len(calls) == 2
    clock.now += 30  # dead now: the failure is the answer
    with pytest.raises(UpstreamUnavailable):
        sessions.current(cookie, down)
    lease_key = "refresh:" + sessions.sealer.key("session", cookie)
    assert store.lease(lease_key, 10) is not None  # another request holds it and never finishes
    with pytest.raises(UpstreamTimeout, match="waited too long"):
        sessions.current(cookie, down)


def test_ending_a_keycloak_session_deletes_each_of_its_records(store):
    sessions = Sessions(store, SECRET, timeout=2)
    first, _ = sessions.create(tokens(), "kc-sid")
    second, _ = sessions.create(tokens(access="access-b"), "kc-sid")
    other, _ = sessions.create(tokens(sub="user-2"), "other-sid")
    sessions.end_sid("kc-sid")
    for cookie in (first, second):
        with pytest.raises(NotLoggedIn):
            sessions.find(cookie)
        assert store.get(sessions.sealer.key("session", cookie)) is None
    assert sessions.find(other).sub == "user-2"


def test_a_session_in_use_past_its_first_idle_time_is_still_found_by_its_keycloak_session(tmp_path):
    clock = Clock()
    sessions = Sessions(HostStore(str(tmp_path / "s"), clock=clock), SECRET, timeout=2, clock=clock)
    cookie, _ = sessions.create(tokens(access="access-0"), "kc-sid")
    for n in range(1, 8):  # the browser is busy: a refresh every 290 s, each one extending the session
        clock.now += 290
        assert sessions.current(cookie, lambda _, n=n: tokens(access=f"access-{n}")).access_token == f"access-{n}"
    sessions.end_sid("kc-sid")  # 2,030 s after the login: a back-channel logout
    with pytest.raises(NotLoggedIn):
        sessions.find(cookie)


def test_a_session_whose_keycloak_session_ended_is_deleted_at_its_next_use(store):
    ended = set()
    sessions = Sessions(store, SECRET, timeout=2, ended=lambda session: session.sid in ended)
    cookie, _ = sessions.create(tokens(), "kc-sid")
    assert sessions.find(cookie).sid == "kc-sid"
    ended.add("kc-sid")
    with pytest.raises(SessionEnded):
        sessions.current(cookie, refresh=None)
    assert store.get(sessions.sealer.key("session", cookie)) is None


def _use_session(directory, cookie, barrier, results, now):
    store = HostStore(directory, timeout=5)
    sessions = Sessions(store, SECRET, timeout=5, clock=lambda: now)

    def refresh(refresh_token):
        results.put("refreshed")
        time.sleep(0.3)
        return tokens(access="access-2", refresh="refresh-2", expires_in=300)

    barrier.wait()
    results.put(sessions.current(cookie, refresh).access_token)


def test_refresh_happens_once_among_the_processes_of_a_host(tmp_path):
    directory = str(tmp_path / "s")
    created_at = time.time()
    sessions = Sessions(HostStore(directory), SECRET, timeout=5, clock=lambda: created_at)
    cookie, _ = sessions.create(tokens(expires_in=300), "sid")
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(6), context.Queue()
    later = created_at + 298  # 2 s left: each process must refresh first, and only one may
    processes = [context.Process(target=_use_session, args=(directory, cookie, barrier, results, later))
                 for _ in range(6)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    answers = sorted(results.get(timeout=5) for _ in range(7))
    assert answers == ["access-2"] * 6 + ["refreshed"]
