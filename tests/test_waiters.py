"""The bound on logins of one username waiting for its turn: counted over the threads and processes of a host, or
over every host through Redis; the excess is refused at once, places come back when their holder ends or dies."""

import multiprocessing
import threading
import time

import pytest
import responses

from gateway import create_app
from gateway.errors import LoginQueueTimeout, TooManyAttempts
from gateway.store.redis import RedisStore
from gateway.userlock import SharedTurns, UsernameTurns
from tests.conftest import free_port, mock_config

TOKEN = "http://keycloak.test/auth/realms/edm/protocol/openid-connect/token"


class Holders:
    """Threads that each take the username's place and turn (or wait for it) and keep it until `release`."""

    def __init__(self, turns, username="ahmadakbar"):
        self.turns, self.username = turns, username
        self.release = threading.Event()
        self.threads, self.errors = [], []

    def add(self, count):
        for _ in range(count):
            thread = threading.Thread(target=self._hold)
            thread.start()
            self.threads.append(thread)

    def _hold(self):
        try:
            with self.turns.hold(self.username):
                self.release.wait(10)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            self.errors.append(exc)

    def done(self):
        self.release.set()
        for thread in self.threads:
            thread.join()


def wait_until(condition, timeout=5):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def refused_at_once(turns, username="AhmadAkbar"):
    started = time.monotonic()
    with pytest.raises(TooManyAttempts) as refusal:
        with turns.hold(username):
            pass
    assert time.monotonic() - started < 0.1
    return refusal.value


def test_the_holder_and_the_waiters_fill_the_places_the_next_is_refused_at_once(tmp_path):
    turns = UsernameTurns(str(tmp_path), timeout=5, waiters=3)
    holders = Holders(turns)
    holders.add(4)
    wait_until(lambda: turns.waiting("ahmadakbar") == 3)
    refusal = refused_at_once(turns)
    assert (refusal.retry_after, refusal.headers) == (1, {"Retry-After": "1"})
    assert refusal.reason == "too many logins of the same username already wait for their turn on this host"
    with turns.hold("budisantoso"):  # another username has its own places
        pass
    holders.done()
    assert holders.errors == []
    with turns.hold("ahmadakbar"):  # every place came back
        pass


def test_no_waiters_allowed_means_one_login_of_a_username_at_a_time(tmp_path):
    turns = UsernameTurns(str(tmp_path), timeout=5, waiters=0)
    holders = Holders(turns)
    holders.add(1)
    wait_until(lambda: "ahmadakbar" in turns._queues)
    refused_at_once(turns)
    holders.done()


def _hold_places(directory, count, ready):
    turns = UsernameTurns(directory, timeout=30, waiters=3)
    Holders(turns).add(count)
    wait_until(lambda: turns.waiting("ahmadakbar") == count - 1, timeout=10)
    ready.set()
    time.sleep(30)  # until killed


def test_the_places_are_counted_over_every_process_of_the_host_and_come_back_when_one_dies(tmp_path):
    ready = multiprocessing.Event()
    other = multiprocessing.Process(target=_hold_places, args=(str(tmp_path), 3, ready), daemon=True)
    other.start()
    try:
        assert ready.wait(10)
        turns = UsernameTurns(str(tmp_path), timeout=10, waiters=3)
        mine = Holders(turns)
        mine.add(1)  # the fourth and last place: it waits for the other process's turn
        wait_until(lambda: "ahmadakbar" in turns._queues)
        refused_at_once(turns)
    finally:
        other.kill()  # the kernel gives back its places (and its turn) with its files
        other.join(10)
    mine.done()  # it had the turn once the other process was gone
    assert mine.errors == []
    holders = Holders(turns)
    holders.add(4)
    wait_until(lambda: turns.waiting("ahmadakbar") == 3)
    holders.done()
    assert holders.errors == []


def test_a_login_refused_for_want_of_a_place_answers_429_at_once_and_never_reaches_keycloak(tmp_path):
    app = create_app(mock_config(GATEWAY_LOGIN_WAITERS="0", TMPDIR=str(tmp_path),
                                 GATEWAY_LIMIT_PER_USERNAME="off", GATEWAY_LIMIT_PER_ADDRESS="off"))
    holders = Holders(app.extensions["keycloak"].turns)
    holders.add(1)
    wait_until(lambda: "ahmadakbar" in holders.turns._queues)
    client = app.test_client()
    with responses.RequestsMock() as upstream:  # no answer registered: a grant would be an error
        edm = client.post("/api/login", json={"username": "AHMADAKBAR", "password": "password"})
        drf = client.post("/users/login/", json={"username": "ahmadakbar", "password": "password"})
        assert len(upstream.calls) == 0
    holders.done()
    assert (edm.status_code, edm.json, edm.headers["Retry-After"]) == (
        429, "code=429, message=too many login attempts", "1")
    assert (drf.status_code, drf.json, drf.headers["Retry-After"]) == (
        429, {"detail": "Request was throttled. Expected available in 1 second."}, "1")


@pytest.fixture
def store(redis_url):
    return RedisStore.from_settings(create_app(mock_config(GATEWAY_REDIS_URL=redis_url)).config["SETTINGS"])


def test_shared_turns_let_one_login_of_a_username_in_at_a_time_across_hosts(store):
    hosts = [SharedTurns(store, timeout=5), SharedTurns(store, timeout=5)]
    inside, overlaps = [], []

    def grant(turns, name):
        with turns.hold(name):
            inside.append(1)
            overlaps.append(len(inside))
            time.sleep(0.02)
            inside.pop()

    threads = [threading.Thread(target=grant, args=(hosts[i % 2], "Ahmad" if i % 3 else "ahmad")) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert overlaps == [1] * 8


def test_shared_places_are_counted_over_every_host(store):
    one, two = SharedTurns(store, timeout=5, waiters=2), SharedTurns(store, timeout=5, waiters=2)
    first, second = Holders(one), Holders(two)
    first.add(2)
    second.add(1)
    wait_until(lambda: store.client.zcard(f"edm-gateway:places:{_hashed('ahmadakbar')}") == 3)
    assert refused_at_once(one).reason == (
        "too many logins of the same username already wait for their turn on the gateways sharing Redis")
    refused_at_once(two)
    second.release.set()  # whichever of them holds the turn, every one gets it in its turn
    first.done()
    second.done()
    assert first.errors == second.errors == []
    assert store.client.zcard(f"edm-gateway:places:{_hashed('ahmadakbar')}") == 0


def _hashed(username):
    import hashlib

    return hashlib.sha256(username.encode()).hexdigest()


def test_a_shared_turn_not_had_in_time_is_a_login_queue_timeout(store):
    holder = SharedTurns(store, timeout=5)
    holders = Holders(holder)
    holders.add(1)
    wait_until(lambda: store.client.exists(f"edm-gateway:turn:{_hashed('ahmadakbar')}"))
    with pytest.raises(LoginQueueTimeout, match="elsewhere"):
        with SharedTurns(store, timeout=0.2).hold("ahmadakbar"):
            pass
    holders.done()


def test_places_and_turns_of_a_crashed_host_lapse_by_themselves(store):
    turns = SharedTurns(store, timeout=0.2, waiters=0)  # lock expiry 1.4 s, places 1.6 s
    name = _hashed("ahmadakbar")
    store.client.zadd(f"edm-gateway:places:{name}", {"crashed": time.time() + 0.5})  # left by a dead host
    refused_at_once(turns)
    time.sleep(0.6)
    with turns.hold("ahmadakbar"):
        pass


def test_a_shared_turn_with_redis_unreachable_is_the_stores_503(tmp_path):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    store = RedisStore.from_settings(create_app(mock_config(GATEWAY_REDIS_URL=dead)).config["SETTINGS"])
    from gateway.errors import StoreUnavailable

    with pytest.raises(StoreUnavailable, match="redis login places: ConnectionError"):
        with SharedTurns(store, timeout=1).hold("ahmadakbar"):
            pass


@pytest.fixture(params=["host", "shared"])
def any_turns(request, tmp_path):
    if request.param == "host":
        return lambda: UsernameTurns(str(tmp_path), timeout=5)
    store = request.getfixturevalue("store")
    return lambda: SharedTurns(store, timeout=5)


def test_a_turn_begins_only_once_the_previous_grant_settled_in_keycloak(any_turns):
    """Keycloak clears a grant's in-flight mark just after answering: the next grant of the user waits that out,
    in this process or another."""
    from gateway.userlock import SETTLE_SECONDS

    one, two = any_turns(), any_turns()
    with one.hold("ahmadakbar"):
        pass
    ended = time.monotonic()
    with two.hold("AhmadAkbar"):
        began = time.monotonic()
    assert began - ended >= SETTLE_SECONDS - 0.005
    with one.hold("budisantoso"):  # another username does not wait
        assert time.monotonic() - began < SETTLE_SECONDS


def test_a_worker_keeps_one_thread_in_eight_for_everyone_else(tmp_path):
    """Even when every place of a username is in one worker, 7 of its 8 threads at most are in line for it."""
    turns = UsernameTurns(str(tmp_path), timeout=5, waiters=20, threads=8)
    holders = Holders(turns)
    holders.add(7)
    wait_until(lambda: turns.waiting("ahmadakbar") == 6)
    assert refused_at_once(turns).reason == (
        "too many logins of the same username already wait for their turn in this worker process")
    with turns.hold("budisantoso"):
        pass
    holders.done()
    assert holders.errors == []
    assert UsernameTurns(str(tmp_path), timeout=5, threads=4).in_line_per_process == 4  # under 8 threads: no reserve
    assert UsernameTurns(str(tmp_path), timeout=5, threads=16).in_line_per_process == 14
