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
    """A refusal, not a wait: one that waited for the turn would end in the turn or in LoginQueueTimeout, after up to
    the turns' timeout (5 s or more in these tests; the bound is far above a refusal's time on a loaded machine)."""
    started = time.monotonic()
    with pytest.raises(TooManyAttempts) as refusal:
        with turns.hold(username):
            pass
    assert time.monotonic() - started < 2.5
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
    holders = Holders(app.extensions["gateway"].turns)
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


def test_a_shared_turn_lasts_while_its_holder_is_inside_longer_than_its_expiry(store):
    """Two hosts: the first holds the turn for longer than the lock's expiry (2 x timeout + 1 = 3 s); the second,
    waiting all along, gets in only once the first has left."""
    one, two = SharedTurns(store, timeout=1), SharedTurns(store, timeout=10)
    assert one.expiry == 3
    inside, entered = threading.Event(), []

    def first_host():
        with one.hold("ahmadakbar"):
            inside.set()
            started = time.monotonic()
            while time.monotonic() - started < one.expiry + 1.5:  # the grant and look-ups of a slow Keycloak
                time.sleep(0.05)
            inside.clear()

    holder = threading.Thread(target=first_host)
    holder.start()
    assert inside.wait(5)
    with two.hold("AhmadAkbar"):
        entered.append(inside.is_set())
    holder.join()
    assert entered == [False]


def _hold_shared_turn(url, ready):
    turns = SharedTurns(RedisStore.from_settings(create_app(mock_config(GATEWAY_REDIS_URL=url)).config["SETTINGS"]),
                        timeout=1)
    with turns.hold("ahmadakbar"):
        ready.set()
        time.sleep(60)  # until killed


def test_the_turn_of_a_host_that_died_inside_lapses_within_its_expiry(store, redis_url):
    ready = multiprocessing.Event()
    crashed = multiprocessing.Process(target=_hold_shared_turn, args=(redis_url, ready), daemon=True)
    crashed.start()
    try:
        assert ready.wait(10)
        time.sleep(3.5)  # past its first expiry: its watchdog renewed it meanwhile
        assert store.client.exists(f"edm-gateway:turn:{_hashed('ahmadakbar')}")
    finally:
        crashed.kill()
        crashed.join(10)
    killed = time.monotonic()
    with SharedTurns(store, timeout=10).hold("ahmadakbar"):  # the renewals stopped with the process
        assert time.monotonic() - killed < 3 + 2  # its expiry, and time to spare for a loaded machine


def test_a_holder_stuck_past_every_bound_of_its_calls_stops_keeping_the_username(store):
    stuck = SharedTurns(store, timeout=0.2)  # expiry 1.4 s, renewed for at most 2 s
    holders = Holders(stuck)
    holders.add(1)
    wait_until(lambda: store.client.exists(f"edm-gateway:turn:{_hashed('ahmadakbar')}"))
    with SharedTurns(store, timeout=10).hold("ahmadakbar"):
        assert holders.threads[0].is_alive()  # still inside, but past any grant and look-up
    holders.done()
    assert holders.errors == []


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


def test_a_turn_begins_only_once_the_previous_grant_settled_in_keycloak(any_turns, monkeypatch):
    """Keycloak clears a grant's in-flight mark just after answering: the next grant of the user waits that out,
    in this process or another, and a grant of another username does not. The settling time is made long here
    (30 ms in production), so that the order shows it whatever the machine's load."""
    from gateway import userlock

    monkeypatch.setattr(userlock, "SETTLE_SECONDS", 1.5)
    one, two = any_turns(), any_turns()
    # Another username, and on a host one of another lock file (the stripes' key is random per directory).
    other = next(name for name in ("budisantoso", "citralestari", "dewisartika")
                 if not hasattr(one, "stripe") or one.stripe(name) != one.stripe("ahmadakbar"))
    with one.hold("ahmadakbar"):
        ended = time.monotonic()  # the grant ends after this, as the turn is passed on
    began, order = {}, []

    def same_username():
        with two.hold("AhmadAkbar"):
            began["ahmadakbar"] = time.monotonic()
            order.append("ahmadakbar")

    waiting = threading.Thread(target=same_username)
    waiting.start()
    with one.hold(other):
        order.append(other)
    waiting.join()
    assert order == [other, "ahmadakbar"]
    assert began["ahmadakbar"] - ended >= 1.5


@pytest.mark.parametrize("threads, in_line", [(8, 7), (4, 3)])
def test_a_worker_keeps_threads_for_everyone_else(tmp_path, threads, in_line):
    """Even when every place of a username is in one worker, one thread in eight, and at least one, stays free."""
    turns = UsernameTurns(str(tmp_path), timeout=5, waiters=20, threads=threads)
    holders = Holders(turns)
    holders.add(in_line)
    wait_until(lambda: turns.waiting("ahmadakbar") == in_line - 1)
    assert refused_at_once(turns).reason == (
        "too many logins of the same username already wait for their turn in this worker process")
    with turns.hold("budisantoso"):
        pass
    holders.done()
    assert holders.errors == []


def test_one_thread_stays_free_whenever_a_worker_has_two_or_more():
    from gateway.userlock import in_line_bound

    assert {threads: in_line_bound(threads) for threads in (1, 2, 3, 4, 7, 8, 15, 16, 64)} == {
        1: 1, 2: 1, 3: 2, 4: 3, 7: 6, 8: 7, 15: 14, 16: 14, 64: 56}
