"""The store's contract (gateway/store/), every test run on each back-end: the host's SQLite file, a real
redis-server, and a real Redis primary found through real Sentinels; then what each back-end adds: the host
file's privacy, a Redis that cannot be reached, a Sentinel failover followed without a restart."""

import os
import shutil
import stat
import subprocess
import sys
import threading
import time

import pytest

from gateway.config import ConfigError, load_settings
from gateway.errors import StoreUnavailable, UpstreamUnavailable
from gateway.store import connect
from gateway.store.host import HostStore
from gateway.store.redis import RedisStore
from tests.sentinel import SentinelGroup


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory):
    group = SentinelGroup(tmp_path_factory.mktemp("sentinels")).start()
    yield group
    group.stop()


def settings(**environ):
    return load_settings(environ={"KEYCLOAK_CLIENT_SECRET": "x", **environ})


@pytest.fixture(params=["host", "redis", "sentinel"])
def store(request, tmp_path):
    """(store, advance): `advance(seconds)` moves the store's clock on (the host's is injected; Redis keeps its
    own, so there the test waits)."""
    if request.param == "host":
        clock = Clock()
        store = HostStore(str(tmp_path / "state"), timeout=2, clock=clock)

        def advance(seconds):
            clock.now += seconds
        return store, advance
    if request.param == "redis":
        store = RedisStore.from_settings(settings(GATEWAY_REDIS_URL=request.getfixturevalue("redis_url")))
    else:
        group = request.getfixturevalue("sentinels")
        store = RedisStore.from_settings(settings(GATEWAY_REDIS_URL=group.url))
        store.redis.flushall()
    return store, lambda seconds: time.sleep(seconds + 0.05)


def test_put_get_take_delete(store):
    store, _ = store
    assert store.get("k") is None
    assert store.put("k", b"v1", 10) is True
    assert store.get("k") == b"v1"
    assert store.take("k") == b"v1"
    assert store.take("k") is None and store.get("k") is None
    store.put("k", b"v2", 10)
    store.delete("k")
    assert store.get("k") is None


def test_entries_expire(store):
    store, advance = store
    store.put("k", b"v", 0.2)
    assert store.get("k") == b"v"
    advance(0.3)
    assert store.get("k") is None
    assert store.take("k") is None


def test_put_many_stores_each_entry_with_its_own_expiry_over_what_was_there(store):
    store, advance = store
    store.put("a", b"old", 10)
    assert store.put_many([("a", b"new", 10), ("b", b"short", 0.2)]) is None
    assert (store.get("a"), store.get("b")) == (b"new", b"short")
    advance(0.3)
    assert (store.get("a"), store.get("b")) == (b"new", None)


def test_only_existing_writes_over_a_live_entry_only(store):
    store, _ = store
    assert store.put("k", b"new", 10, only_existing=True) is False
    assert store.get("k") is None  # a deleted session is never brought back by a late refresh
    store.put("k", b"old", 10)
    assert store.put("k", b"new", 10, only_existing=True) is True
    assert store.get("k") == b"new"


def test_put_new_stores_for_the_first_caller_only_until_it_expires(store):
    store, advance = store
    assert store.put_new("jti", b"first", 0.2) is True
    assert store.put_new("jti", b"second", 10) is False
    assert store.get("jti") == b"first"
    advance(0.3)
    assert store.put_new("jti", b"third", 10) is True
    assert store.get("jti") == b"third"


def test_a_lease_is_held_by_one_until_released_or_expired(store):
    store, advance = store
    token = store.lease("lease", 10)
    assert token is not None
    assert store.lease("lease", 10) is None
    store.release("lease", "not-the-token")
    assert store.lease("lease", 10) is None
    store.release("lease", token)
    short = store.lease("lease", 0.2)
    assert short is not None
    advance(0.3)
    taken = store.lease("lease", 10)
    assert taken is not None  # a dead holder's lease runs out
    store.release("lease", short)  # the late holder's release leaves the new holder's lease alone
    assert store.lease("lease", 10) is None


def test_a_lease_is_renewed_only_by_its_holder_while_it_holds_it(store):
    store, advance = store
    token = store.lease("lease", 0.3)
    assert store.renew("lease", "not-the-token", 10) is False
    assert store.renew("lease", token, 10) is True
    advance(0.4)
    assert store.lease("lease", 10) is None  # renewed: still held
    store.release("lease", token)
    short = store.lease("lease", 0.2)
    advance(0.3)
    assert store.renew("lease", short, 10) is False  # expired: renewing does not bring it back
    assert store.lease("lease", 10) is not None


def test_of_concurrent_takers_exactly_one_gets_the_value(store):
    store, _ = store
    for round_ in range(20):
        store.put(f"state{round_}", b"login", 10)
    got = []

    def take_all():
        for round_ in range(20):
            if store.take(f"state{round_}") is not None:
                got.append(round_)

    threads = [threading.Thread(target=take_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == list(range(20))


def test_a_feed_hands_each_reader_what_came_after_its_cursor(store):
    store, _ = store
    assert store.since("ended", None) == (None, [])
    store.append("ended", b"one", 60)
    store.append("ended", b"two", 60)
    store.append("other", b"elsewhere", 60)
    cursor, values = store.since("ended", None)
    assert values == [b"one", b"two"]
    assert store.since("ended", cursor) == (cursor, [])
    store.append("ended", b"three", 60)
    later, values = store.since("ended", cursor)
    assert values == [b"three"] and later != cursor
    assert store.since("ended", None)[1] == [b"one", b"two", b"three"]  # a new reader gets all that is kept


def test_a_feed_forgets_entries_after_their_retention(store):
    store, advance = store
    store.append("ended", b"old", 0.2)
    advance(0.3)
    store.append("ended", b"new", 0.2)
    assert store.since("ended", None)[1] == [b"new"]


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
    os.remove(tmp_path / "s" / HostStore.FILE)  # its write-ahead log left behind, as a careless cleaner would
    assert store.get("k") is None  # the same thread, too, opens the file anew
    store.put("k", b"again", 10)
    assert HostStore(str(tmp_path / "s")).get("k") == b"again"  # written where the other processes read


def test_a_host_store_file_removed_and_made_again_is_the_one_every_process_writes_to(tmp_path):
    """Two processes' stores (each its own connection): once a cleaner removed the file and one of them made it
    again, the other one writes there too, not to the file that nobody reads any more."""
    first, second = HostStore(str(tmp_path / "s")), HostStore(str(tmp_path / "s"))
    first.put("before", b"1", 10)
    assert second.get("before") == b"1"
    os.remove(tmp_path / "s" / HostStore.FILE)
    first.put("from first", b"2", 10)  # makes the file again
    second.put("from second", b"3", 10)
    assert first.get("from second") == b"3" and second.get("from first") == b"2"
    assert HostStore(str(tmp_path / "s")).get("from second") == b"3"


def test_a_file_replaced_just_as_a_process_opens_it_is_noticed_at_its_next_write(tmp_path, monkeypatch):
    """The file is removed and made again by another process right after this one opened it: its next write goes
    to the new file, not to the removed one that only it still holds."""
    first, second = HostStore(str(tmp_path / "s")), HostStore(str(tmp_path / "s"))
    second.put("k", b"before", 60)
    opened, replaced = HostStore._connect, []

    def connect_then_replaced(store, busy_timeout=0.0):
        connection = opened(store, busy_timeout)
        if store is first and not replaced:
            replaced.append(True)
            os.remove(store.path)
            second.get("anything")  # the other process makes the file again
        return connection

    monkeypatch.setattr(HostStore, "_connect", connect_then_replaced)
    first.get("k")  # opens, and the file is replaced under it
    first.put("from first", b"1", 60)
    assert replaced and second.get("from first") == b"1"


def test_a_feed_read_on_across_its_file_made_again_skips_nothing_written_to_the_new_file(tmp_path):
    """A reader's cursor from the removed file (the ended-sessions feed every worker follows) still finds what is
    appended to the new one."""
    reader, writer = HostStore(str(tmp_path / "s")), HostStore(str(tmp_path / "s"))
    for n in range(5):
        writer.append("ended", f"before {n}".encode(), 3600)
    cursor, values = reader.since("ended", None)
    assert len(values) == 5
    os.remove(tmp_path / "s" / HostStore.FILE)
    writer.append("ended", b"a session ended after", 3600)  # into the file made again
    assert reader.since("ended", cursor)[1] == [b"a session ended after"]


def test_a_state_directory_made_unusable_while_running_is_a_503_not_a_crash(tmp_path):
    store = HostStore(str(tmp_path / "s"))
    store.put("k", b"v", 10)
    shutil.rmtree(tmp_path / "s")
    (tmp_path / "s").mkdir(mode=0o755)  # put back by someone else, open to other users
    with pytest.raises(StoreUnavailable):
        store.get("k")
    assert store.ready() is False


def test_a_file_another_process_keeps_locked_holds_no_reader_up_and_no_writer_past_its_timeout(tmp_path):
    """Another process holds the write lock for 2.5 s (a backup, an operator's sqlite3 shell); the store may wait
    1 s. Each of four writers gives up after its own second, not after the writers before it; a reader reads."""
    store = HostStore(str(tmp_path / "s"), timeout=1.0)
    store.put("k", b"v", 60)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
         "db.execute('BEGIN IMMEDIATE'); print('held', flush=True); time.sleep(2.5); db.execute('COMMIT')",
         str(tmp_path / "s" / HostStore.FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        began, answers = time.monotonic(), {}

        def call(name, operation):
            try:
                answers[name] = (operation(), round(time.monotonic() - began, 1))
            except StoreUnavailable:
                answers[name] = ("503", round(time.monotonic() - began, 1))

        threads = [threading.Thread(target=call, args=(f"put {n}", lambda n=n: store.put(f"p{n}", b"x", 60)))
                   for n in range(4)]
        threads.append(threading.Thread(target=call, args=("get", lambda: store.get("k"))))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        holder.wait(10)
    assert answers["get"][0] == b"v" and answers["get"][1] < 0.9, answers
    assert all(answers[f"put {n}"][0] == "503" and answers[f"put {n}"][1] <= 1.6 for n in range(4)), answers
    assert store.put("after", b"y", 60) is True


def test_a_put_many_that_fails_halfway_stores_none_of_it_and_leaves_the_store_working(tmp_path):
    store = HostStore(str(tmp_path / "s"))
    with pytest.raises(StoreUnavailable):
        store.put_many([("first", b"stored?", 10), ("second", object(), 10)])  # the second cannot be written
    assert store.get("first") is None
    store.put("later", b"committed", 10)
    assert HostStore(str(tmp_path / "s")).get("later") == b"committed"  # not held in a transaction left open


def test_the_threads_of_a_process_share_its_host_store(tmp_path):
    store = HostStore(str(tmp_path / "s"))
    failures = []

    def writer(n):
        try:
            for i in range(50):
                store.put_many([(f"w{n}-{i}", b"a", 10), (f"w{n}-{i}-b", b"b", 10)])
                assert store.get(f"w{n}-{i}") == b"a"
        except Exception as exc:  # noqa: BLE001 - reported below, from the main thread
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sum(store.get(f"w{n}-{i}-b") == b"b" for n in range(8) for i in range(50)) == 400


def test_a_redis_that_cannot_be_reached_is_a_503():
    from tests.conftest import free_port

    unreachable = RedisStore.from_settings(settings(GATEWAY_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"))
    with pytest.raises(StoreUnavailable, match="redis get: ConnectionError"):
        unreachable.get("k")
    assert unreachable.ready() is False
    assert issubclass(StoreUnavailable, UpstreamUnavailable) and StoreUnavailable.code == 503


def test_sentinels_that_cannot_be_reached_are_a_503():
    from tests.conftest import free_port

    unreachable = RedisStore.from_settings(settings(
        GATEWAY_REDIS_URL=f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/edm/0"))
    with pytest.raises(StoreUnavailable, match="redis set: MasterNotFoundError"):
        unreachable.put("k", b"v", 10)


def test_connect_picks_the_host_file_or_the_redis_of_the_url(tmp_path, redis_url):
    host = connect(settings(TMPDIR=str(tmp_path)))
    assert isinstance(host, HostStore) and host.redis is None
    assert host.directory == str(tmp_path / f"edm-gateway-{os.getuid()}-state")
    shared = connect(settings(GATEWAY_REDIS_URL=redis_url))
    assert isinstance(shared, RedisStore) and shared.ready() is True


def test_a_sentinel_failover_is_followed_without_a_restart(tmp_path):
    """Writes go on through the Sentinels while the primary is killed: every failure is StoreUnavailable, and once
    the replica is promoted the same store object works again; what the primary had replicated is still there."""
    group = SentinelGroup(tmp_path / "failover").start()
    try:
        store = RedisStore.from_settings(settings(GATEWAY_REDIS_URL=group.url))
        store.put("before", b"kept", 60)
        deadline = time.monotonic() + 2
        while store.redis.execute_command("WAIT", 1, 500) < 1 and time.monotonic() < deadline:
            pass  # the replica has it: a failover can only lose what was not replicated yet
        old = group.kill_primary()
        killed_at = time.monotonic()
        failures, others, recovered_after = 0, [], None
        while time.monotonic() - killed_at < 30:
            try:
                store.put("during", b"x", 60)
            except StoreUnavailable:
                failures += 1
                time.sleep(0.05)
                continue
            except Exception as exc:  # noqa: BLE001 - anything but StoreUnavailable is the finding
                others.append(repr(exc))
                continue
            if group.primary_port() != old:
                recovered_after = time.monotonic() - killed_at
                break
        print(f"sentinel failover: {failures} StoreUnavailable, {len(others)} other errors, writes work again "
              f"after {recovered_after} s")
        assert others == []
        assert recovered_after is not None
        assert store.get("before") == b"kept" and store.get("during") == b"x"
    finally:
        group.stop()
