"""One password grant per username at a time: threads and processes take turns; none waits forever."""

import multiprocessing
import threading
import time

import pytest

from gateway.errors import UpstreamTimeout
from gateway.userlock import UsernameLock


def test_same_username_takes_turns_across_threads(tmp_path):
    lock = UsernameLock(timeout=5, directory=str(tmp_path))
    inside, overlaps = [], []

    def grant(name):
        with lock.hold(name):
            inside.append(1)
            overlaps.append(len(inside))
            time.sleep(0.02)
            inside.pop()

    threads = [threading.Thread(target=grant, args=("Ahmad" if i % 2 else "ahmad",)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert overlaps == [1] * 8


def _hold(directory, started, seconds):
    with UsernameLock(timeout=5, directory=directory).hold("ahmadakbar"):
        started.set()
        time.sleep(seconds)


def test_another_process_holding_the_username_makes_us_wait_then_time_out(tmp_path):
    started = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(str(tmp_path), started, 1.0))
    holder.start()
    assert started.wait(10)
    lock = UsernameLock(timeout=0.2, directory=str(tmp_path))
    with pytest.raises(UpstreamTimeout):
        with lock.hold("ahmadakbar"):
            pass
    holder.join()
    with lock.hold("ahmadakbar"):  # free again once the other process let go
        pass


def test_different_usernames_do_not_wait_for_each_other(tmp_path):
    lock = UsernameLock(timeout=0.2, directory=str(tmp_path))
    with lock.hold("ahmadakbar"):
        with lock.hold("budisantoso"):
            pass


def test_directory_removed_by_a_temp_cleaner_is_made_again(tmp_path):
    directory = tmp_path / "locks"
    lock = UsernameLock(timeout=1, directory=str(directory))
    directory.rmdir()
    with lock.hold("ahmadakbar"):
        assert directory.is_dir()


def test_directory_open_to_other_users_is_refused(tmp_path):
    directory = tmp_path / "locks"
    directory.mkdir(mode=0o777)
    directory.chmod(0o777)
    with pytest.raises(RuntimeError, match="mode 0700"):
        UsernameLock(timeout=1, directory=str(directory))
