"""The BFF session store, both kinds run through the same tests (the host's SQLite file and a real redis-server),
what the session secret seals, and refresh-once: under threads of one process, and processes of one host."""

import multiprocessing
import os
import stat
import threading
import time

import pytest

from gateway.config import ConfigError, load_settings
from gateway.errors import (
    InvalidRefreshToken,
    LoginFailed,
    NotLoggedIn,
    SessionEnded,
    StoreUnavailable,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.keycloak import Tokens
from gateway.sessions import HostStore, RedisStore, Sessions, build_store, code_challenge

SECRET = "a-session-secret-of-at-least-32-characters"


@pytest.fixture(params=["host", "redis"])
def store(request, tmp_path):
    if request.param == "host":
        return HostStore(str(tmp_path / "sessions"), timeout=2)
    import redis

    return RedisStore(redis.Redis.from_url(request.getfixturevalue("redis_url")))  # emptied for the test


def test_put_get_take_delete(store):
    assert store.get("k") is None
    assert store.put("k", b"v1", 10) is True
    assert store.get("k") == b"v1"
    assert store.take("k") == b"v1"
    assert store.take("k") is None and store.get("k") is None
    store.put("k", b"v2", 10)
    store.delete("k")
    assert store.get("k") is None


def test_entries_expire(store):
    store.put("k", b"v", 0.2)
    assert store.get("k") == b"v"
    time.sleep(0.3)
    assert store.get("k") is None
    assert store.take("k") is None


def test_only_existing_writes_over_a_live_entry_only(store):
    assert store.put("k", b"new", 10, only_existing=True) is False
    assert store.get("k") is None  # a deleted session is never brought back by a late refresh
    store.put("k", b"old", 10)
    assert store.put("k", b"new", 10, only_existing=True) is True
    assert store.get("k") == b"new"


def test_a_lease_is_held_by_one_until_released_or_expired(store):
    token = store.lease("lease", 10)
    assert token is not None
    assert store.lease("lease", 10) is None
    store.release("lease", "not-the-token")
    assert store.lease("lease", 10) is None
    store.release("lease", token)
    short = store.lease("lease", 0.2)
    assert short is not None
    time.sleep(0.3)
    assert store.lease("lease", 10) is not None  # a dead holder's lease runs out


def test_of_concurrent_takers_exactly_one_gets_the_value(store):
    for round_ in range(20):
        store.put(f"state{round_}", b"login", 10)
    got = []
    barrier = threading.Barrier(8)

    def take_all():
        barrier.wait()
        got.extend(value for value in (store.take(f"state{r}") for r in range(20)) if value)

    threads = [threading.Thread(target=take_all) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 20


def test_the_host_store_is_private_to_its_user(tmp_path):
    HostStore(str(tmp_path / "s"))
    assert stat.S_IMODE(os.stat(tmp_path / "s").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "s" / HostStore.FILE).st_mode) == 0o600
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    with pytest.raises(ConfigError, match="must be a directory of this user, mode 0700"):
        HostStore(str(open_dir))


def test_the_host_store_comes_back_when_its_file_is_removed(tmp_path):
    store = HostStore(str(tmp_path / "s"))
    store.put("k", b"v", 10)
    os.remove(tmp_path / "s" / HostStore.FILE)
    fresh = []
    thread = threading.Thread(target=lambda: fresh.append(store.get("k")))  # a new thread opens the file anew
    thread.start()
    thread.join()
    assert fresh == [None]


def test_a_store_that_cannot_be_reached_is_a_503(tmp_path):
    import redis

    from tests.conftest import free_port

    unreachable = RedisStore(redis.Redis(port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5))
    with pytest.raises(StoreUnavailable, match="redis get: ConnectionError"):
        unreachable.get("k")
    assert issubclass(StoreUnavailable, UpstreamUnavailable) and StoreUnavailable.code == 503


def test_build_store_picks_the_shared_redis_when_there_is_one(tmp_path, redis_url):
    from gateway import store

    base = {"KEYCLOAK_CLIENT_SECRET": "x", "TMPDIR": str(tmp_path)}
    settings = load_settings(environ=base)
    assert isinstance(build_store(settings, store.connect(settings)), HostStore)
    assert build_store(settings, None).directory == str(tmp_path / f"edm-gateway-{os.getuid()}-sessions")
    with_url = load_settings(environ={**base, "GATEWAY_REDIS_URL": redis_url})
    shared = store.connect(with_url)
    sessions = build_store(with_url, shared)
    assert isinstance(sessions, RedisStore) and sessions.client is shared.client and sessions.ready()


def tokens(access="access-1", refresh="refresh-1", expires_in=300, refresh_expires_in=1800, sub="user-1"):
    return Tokens(access, refresh, expires_in, {"sub": sub, "preferred_username": "someone"}, refresh_expires_in)


def test_the_store_holds_neither_tokens_nor_the_cookie(tmp_path):
    store = HostStore(str(tmp_path / "s"))
    sessions = Sessions(store, SECRET, timeout=2)
    cookie, _ = sessions.create(tokens(access="ACCESS-TOKEN-VALUE", refresh="REFRESH-TOKEN-VALUE"), "sid-1")
    state, _, _ = sessions.begin_login("binding-value-" + "b" * 29, "/after")
    with open(tmp_path / "s" / HostStore.FILE, "rb") as file, open(f"{tmp_path}/s/{HostStore.FILE}-wal", "rb") as wal:
        raw = file.read() + wal.read()
    for secret in (b"ACCESS-TOKEN-VALUE", b"REFRESH-TOKEN-VALUE", cookie.encode(), state.encode(), b"/after",
                   b"binding-value", b"user-1", b"sid-1"):
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


def test_a_login_is_single_use_and_bound_to_its_browser(store):
    sessions = Sessions(store, SECRET, timeout=2)
    state, nonce, challenge = sessions.begin_login("browser-a", "/after")
    with pytest.raises(LoginFailed, match="another browser"):
        sessions.finish_login(state, "browser-b")
    with pytest.raises(LoginFailed, match="another browser"):
        sessions.finish_login(state, None)
    login = sessions.finish_login(state, "browser-a")  # another browser's attempts did not use it up
    assert (login.nonce, login.return_url, code_challenge(login.verifier)) == (nonce, "/after", challenge)
    with pytest.raises(LoginFailed, match="unknown, expired or already used"):
        sessions.finish_login(state, "browser-a")
    with pytest.raises(LoginFailed, match="without state"):
        sessions.finish_login("", "browser-a")


def test_the_pkce_challenge_is_rfc_7636s():
    # RFC 7636, appendix B
    assert code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


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
    clock.now += 290
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

    clock.now += 290

    def refused(refresh_token):
        raise InvalidRefreshToken("refresh grant: HTTP 400 invalid_grant: Session not active")

    with pytest.raises(SessionEnded):
        sessions.current(cookie, refused)
    with pytest.raises(NotLoggedIn):
        sessions.find(cookie)


def test_a_failed_refresh_keeps_a_token_that_still_lives_and_times_out_waiting(store):
    clock = Clock()
    sessions = Sessions(store, SECRET, timeout=0.2, clock=clock)
    cookie, _ = sessions.create(tokens(expires_in=300), "sid")
    clock.now += 280  # 20 s left: inside the margin, still valid

    def down(refresh_token):
        raise UpstreamUnavailable("refresh grant: ConnectionError")

    assert sessions.current(cookie, down).access_token == "access-1"
    clock.now += 30
    with pytest.raises(UpstreamUnavailable):
        sessions.current(cookie, down)
    lease_key = "refresh:" + sessions.sealer.key("session", cookie)
    assert store.lease(lease_key, 10) is not None  # another request holds it and never finishes
    with pytest.raises(UpstreamTimeout, match="waited too long"):
        sessions.current(cookie, down)


def _use_session(directory, cookie, barrier, results):
    store = HostStore(directory, timeout=5)
    sessions = Sessions(store, SECRET, timeout=5)

    def refresh(refresh_token):
        results.put("refreshed")
        time.sleep(0.3)
        return tokens(access="access-2", refresh="refresh-2", expires_in=300)

    barrier.wait()
    results.put(sessions.current(cookie, refresh).access_token)


def test_refresh_happens_once_among_the_processes_of_a_host(tmp_path):
    directory = str(tmp_path / "s")
    sessions = Sessions(HostStore(directory), SECRET, timeout=5)
    cookie, _ = sessions.create(tokens(expires_in=5), "sid")  # a fifth of 5 s: due for refresh within 1 s
    time.sleep(4.1)
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(6), context.Queue()
    processes = [context.Process(target=_use_session, args=(directory, cookie, barrier, results)) for _ in range(6)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    answers = sorted(results.get(timeout=5) for _ in range(7))
    assert answers == ["access-2"] * 6 + ["refreshed"]
