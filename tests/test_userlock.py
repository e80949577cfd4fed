"""One password grant per username at a time: threads and processes take turns, in order, none waits forever,
and nobody can hold another user's turn by choosing a username."""

import hashlib
import multiprocessing
import threading
import time

import pytest

from gateway.config import ConfigError
from gateway.errors import LoginQueueTimeout, StoreUnavailable
from gateway.userlock import UsernameTurns


def test_same_username_takes_turns_across_threads(tmp_path):
    turns = UsernameTurns(str(tmp_path), timeout=5)
    inside, overlaps = [], []

    def grant(name):
        with turns.hold(name):
            inside.append(1)
            overlaps.append(len(inside))
            time.sleep(0.02)
            inside.pop()

    threads = [threading.Thread(target=grant, args=("Ahmad" if i % 2 else "ahmad",)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert overlaps == [1] * 8


def test_waiting_threads_get_the_turn_in_arrival_order(tmp_path):
    turns = UsernameTurns(str(tmp_path), timeout=5)
    order = []
    release = threading.Event()

    def first():
        with turns.hold("ahmadakbar"):
            release.wait(5)

    def later(n):
        with turns.hold("ahmadakbar"):
            order.append(n)

    holder = threading.Thread(target=first)
    holder.start()
    while turns.waiting("ahmadakbar") != 0 or not turns._queues:
        time.sleep(0.001)
    waiters = []
    for n in range(6):
        waiters.append(threading.Thread(target=later, args=(n,)))
        waiters[-1].start()
        while turns.waiting("ahmadakbar") != n + 1:  # each one queued before the next arrives
            time.sleep(0.001)
    release.set()
    for t in [holder, *waiters]:
        t.join()
    assert order == [0, 1, 2, 3, 4, 5]


def test_a_turn_that_does_not_come_is_a_login_queue_timeout_and_leaves_nothing_behind(tmp_path):
    turns = UsernameTurns(str(tmp_path), timeout=0.1)
    with turns.hold("ahmadakbar"):
        failures = []

        def wait():
            try:
                with turns.hold("AhmadAkbar"):
                    pass
            except LoginQueueTimeout as exc:
                failures.append(exc.reason)

        waiter = threading.Thread(target=wait)
        waiter.start()
        waiter.join()
        assert failures == ["waited too long for another login of the same username in this process"]
    assert turns._queues == {}  # memory is bounded by the usernames in use, not by every name ever seen
    with turns.hold("ahmadakbar"):
        pass


def _hold(directory, started, seconds):
    with UsernameTurns(directory, timeout=5).hold("ahmadakbar"):
        started.set()
        time.sleep(seconds)


def test_another_process_holding_the_username_makes_us_wait_then_time_out(tmp_path):
    started = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(str(tmp_path), started, 1.0))
    holder.start()
    assert started.wait(10)
    turns = UsernameTurns(str(tmp_path), timeout=0.2)
    with pytest.raises(LoginQueueTimeout, match="in another process"):
        with turns.hold("ahmadakbar"):
            pass
    holder.join()
    with turns.hold("ahmadakbar"):  # free again once the other process let go
        pass


def test_processes_sharing_a_directory_share_its_stripes_and_other_directories_do_not(tmp_path):
    one, two = UsernameTurns(str(tmp_path / "a"), timeout=1), UsernameTurns(str(tmp_path / "a"), timeout=1)
    other = UsernameTurns(str(tmp_path / "b"), timeout=1)
    names = [f"user{i}" for i in range(50)]
    assert [one.stripe(n) for n in names] == [two.stripe(n) for n in names]
    assert [one.stripe(n).rsplit("/", 1)[1] for n in names] != [other.stripe(n).rsplit("/", 1)[1] for n in names]
    assert (tmp_path / "a" / "stripe.key").stat().st_mode & 0o777 == 0o600


def _old_stripe(username):
    """Where the gateway used to put a username: a public hash onto 1024 files, so collisions could be searched."""
    return int.from_bytes(hashlib.sha256(username.lower().encode()).digest()[:4], "big") % 1024


def test_a_username_chosen_to_collide_with_the_victims_does_not_hold_the_victims_turn(tmp_path):
    victim = "ahmadakbar"
    attacker = next(f"x{i}" for i in range(100000) if _old_stripe(f"x{i}") == _old_stripe(victim))
    turns = UsernameTurns(str(tmp_path), timeout=0.5)
    with turns.hold(attacker):
        # On the attacker's lock file the victim would wait out the timeout and get LoginQueueTimeout: it gets in.
        with turns.hold(victim):
            pass


def test_different_usernames_do_not_wait_for_each_other(tmp_path):
    turns = UsernameTurns(str(tmp_path), timeout=0.2)
    with turns.hold("ahmadakbar"):
        with turns.hold("budisantoso"):
            pass


def test_directory_removed_by_a_temp_cleaner_is_made_again_with_the_same_key(tmp_path):
    directory = tmp_path / "locks"
    turns = UsernameTurns(str(directory), timeout=1)
    stripe = turns.stripe("ahmadakbar")
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()
    with turns.hold("ahmadakbar"):
        assert directory.is_dir()
    assert UsernameTurns(str(directory), timeout=1).stripe("ahmadakbar") == stripe


def test_directory_open_to_other_users_is_refused(tmp_path):
    directory = tmp_path / "locks"
    directory.mkdir(mode=0o777)
    directory.chmod(0o777)
    with pytest.raises(ConfigError, match="mode 0700"):
        UsernameTurns(str(directory), timeout=1)


@pytest.mark.parametrize("kind", ["host", "redis"])
def test_after_a_grant_that_timed_out_the_next_turn_waits_for_keycloak_to_be_done(tmp_path, kind, request):
    """The grant may still run in Keycloak, which would refuse an overlapping one as a wrong password."""
    from gateway.errors import LoginQueueTimeout
    from gateway.userlock import SharedTurns

    if kind == "host":
        turns = UsernameTurns(str(tmp_path / "locks"), timeout=2)
    else:
        import redis
        from gateway.store.redis import RedisStore

        turns = SharedTurns(RedisStore(redis.Redis.from_url(request.getfixturevalue("redis_url"))), timeout=2)
    with turns.hold("ahmadakbar") as turn:
        turn.settle = 0.6  # as the login does after a timed-out grant
    ended = time.monotonic()
    with turns.hold("ahmadakbar"):
        began = time.monotonic()
    assert began - ended >= 0.55
    with turns.hold("ahmadakbar") as turn:
        turn.settle = 5  # longer than the next login may wait: it is told so, not let in
    with pytest.raises(LoginQueueTimeout):
        with turns.hold("ahmadakbar"):
            pass


def test_a_turn_that_a_failover_kept_from_being_released_is_released_on_the_promoted_replica(sentinel_group):
    """The primary dies as a login ends: its turn, already on the replica, could not be released. Once the replica is
    promoted the gateway releases it there, so the next login of the username gets its turn as soon as the last
    grant has settled (here 3 s, as after a grant that timed out) or the promotion is done, whichever is later:
    not after the turn's expiry (2 x timeout + 1 = 11 s; the next login may wait 5 s), nor 3 s after the promotion."""
    from gateway.config import load_settings
    from gateway.store import translated
    from gateway.store.redis import RedisStore
    from gateway.userlock import SharedTurns

    def turns():  # one per gateway process, each with its own connections
        store = RedisStore.from_settings(load_settings(environ={"KEYCLOAK_CLIENT_SECRET": "x",
                                                                "GATEWAY_REDIS_URL": sentinel_group.url}))
        return SharedTurns(store, timeout=5), store

    ending, store = turns()
    with ending.hold("ahmadakbar") as turn:
        turn.settle = 3
        assert store.redis.execute_command("WAIT", 1, 2000) == 1  # the turn is on the replica too
        old = sentinel_group.kill_primary()
    ended = time.monotonic()
    sentinel_group.wait_for_promotion(old)
    nxt, reaching = turns()
    while True:  # promoted for the gateway once it reaches the new primary (the Sentinels may lag a moment)
        try:
            with translated("ping"):
                reaching.redis.ping()
            break
        except StoreUnavailable:
            assert time.monotonic() - ended < 30, "the new primary out of reach 30 s after the old one died"
            time.sleep(0.02)
    promoted = time.monotonic()
    with nxt.hold("ahmadakbar"):
        began = time.monotonic()
    due = max(ended + 3, promoted)
    assert -0.1 <= began - due < 1, (f"settled {ended + 3 - promoted:+.1f} s after the promotion, the next turn "
                                     f"began {began - promoted:+.1f} s after it")
