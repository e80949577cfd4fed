"""Under gunicorn (2 worker processes, 4 threads each) against the real Keycloak: concurrent logins never mix
users up, and concurrent logins of one username never fail falsely (Keycloak refuses overlapping grants). A login
may be told to come back (the documented 429 with Retry-After: 1) where more logins of its username arrive than
the bound lets wait, here more than 3 in one worker; the clients below do, as the portal should."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import DEV_SECRET, LIVE_URL, Gunicorn


@pytest.fixture
def gateway(kc):
    server = Gunicorn({"KEYCLOAK_URL": LIVE_URL, "KEYCLOAK_CLIENT_SECRET": DEV_SECRET,
                       "GATEWAY_WORKERS": "2", "GATEWAY_THREADS": "4"}).wait_ready()
    yield server
    server.stop()


COME_BACK = ("code=429, message=too many login attempts", "1")


def login_all(gateway, users, workers):
    """Every user's login at once; one told to come back tries again after Retry-After. The last answers, and the
    refusals on the way (each must be COME_BACK)."""
    refusals = []

    def login(user):
        for _ in range(20):
            answer = requests.post(gateway.url + "/api/login", timeout=30,
                                   json={"username": user.username, "password": user.password})
            if answer.status_code != 429:
                return answer
            refusals.append((answer.json(), answer.headers["Retry-After"]))
            time.sleep(int(answer.headers["Retry-After"]))
        return answer

    with ThreadPoolExecutor(max_workers=workers) as pool:
        answers = list(pool.map(login, users))
    assert set(refusals) <= {COME_BACK}
    return answers


def told(answer):
    return answer.status_code, answer.json()["message"] if answer.status_code == 200 else answer.json()


def test_many_users_at_once_each_get_their_own_identity(gateway, kc):
    users = [kc.create_user() for _ in range(8)]
    answers = login_all(gateway, users * 3, workers=16)
    assert [told(a) for a in answers] == [(200, u.id) for u in users * 3]


def test_one_user_logging_in_many_times_at_once_never_fails_falsely(gateway, kc):
    """12 at once: more than the 8 places of a username on a host, so some are told to come back; each one that
    does gets its 200. None is ever told a wrong password."""
    user = kc.create_user()
    assert [told(a) for a in login_all(gateway, [user] * 12, workers=12)] == [(200, user.id)] * 12
    assert kc.admin.get_bruteforce_detection_status(user.id)["numFailures"] == 0


def test_right_and_wrong_passwords_of_one_user_at_once_are_each_told_truly(gateway, kc):
    """The brute-force look-up that tells a wrong password from a lock runs within the username's turn: while a
    grant of the user is in flight Keycloak reports the user as locked."""
    for _ in range(3):
        user = kc.create_user()
        wrong = type(user)(user.id, user.username, "not-the-password")
        answers = login_all(gateway, [user, wrong, user, user], workers=4)
        assert [told(a) for a in answers] == [
            (200, user.id), (400, "code=400, message=wrong password"), (200, user.id), (200, user.id)]
