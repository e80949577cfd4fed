"""Several gateways sharing nothing but one Redis, each under gunicorn with its own runtime and temp directories (so
no lock file is shared): the limits and the one-grant-per-username rule hold across them, against the real
Keycloak. Also: the stack's own Redis (the one `make test` and `make run` start) serves a gateway, and a gateway
without Redis says at start that its limits are per process."""

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import DEV_SECRET, LIVE_URL, Gunicorn

TOO_MANY = "code=429, message=too many login attempts"


def gateway(directory, **env):
    directory.mkdir(parents=True, exist_ok=True)
    return Gunicorn({"KEYCLOAK_URL": LIVE_URL, "KEYCLOAK_CLIENT_SECRET": DEV_SECRET, "GATEWAY_WORKERS": "2",
                     "GATEWAY_THREADS": "8", "XDG_RUNTIME_DIR": str(directory), "TMPDIR": str(directory), **env})


@pytest.fixture
def two_gateways(tmp_path, redis_url, kc):
    servers = [gateway(tmp_path / name, GATEWAY_REDIS_URL=redis_url, GATEWAY_LIMIT_PER_USERNAME="5/minute")
               for name in ("host-a", "host-b")]
    yield [server.wait_ready() for server in servers]
    for server in servers:
        server.stop()


def login(url, username, password):
    return requests.post(f"{url}/api/login", json={"username": username, "password": password}, timeout=30)


def test_a_per_username_limit_holds_across_gateways(two_gateways, kc):
    user = kc.create_user()
    answers = [login(two_gateways[i % 2].url, user.username.upper() if i % 3 else user.username, "wrong-password")
               for i in range(7)]
    statuses = [(a.status_code, a.json()) for a in answers]
    # Five failures (wrong password, or locked once Keycloak's own brute-force detection steps in), then refusals
    # from either gateway, which never reach Keycloak.
    assert all(status == 400 and body in ("code=400, message=wrong password",
                                          "code=403, message=account temporarily locked")
               for status, body in statuses[:5]), statuses
    assert statuses[5:] == [(429, TOO_MANY)] * 2
    assert all(1 <= int(a.headers["Retry-After"]) <= 60 for a in answers[5:])
    assert kc.admin.get_bruteforce_detection_status(user.id)["numFailures"] <= 5


def test_concurrent_logins_of_one_user_spread_over_both_gateways_all_succeed(two_gateways, kc):
    user = kc.create_user()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda i: login(two_gateways[i % 2].url, user.username, user.password), range(8)))
    assert [(a.status_code, a.json()) for a in answers if a.status_code != 200] == []
    assert [a.json()["message"] for a in answers] == [user.id] * 8
    assert kc.admin.get_bruteforce_detection_status(user.id)["numFailures"] == 0


def test_the_stacks_redis_serves_a_gateway(tmp_path, kc, redis_url):
    """`make test` starts the stack's Redis as `make run` does and names it in TEST_REDIS_URL; run by hand without
    it, a private Redis stands in."""
    url = os.environ.get("TEST_REDIS_URL") or redis_url
    server = gateway(tmp_path, GATEWAY_REDIS_URL=url).wait_ready()
    try:
        user = kc.create_user()
        assert requests.get(server.url + "/readyz", timeout=10).json() == {"status": 200, "message": "ready"}
        assert login(server.url, user.username, user.password).json()["message"] == user.id
    finally:
        log = server.stop()
    assert "rate limits are counted per worker process" not in log


@pytest.mark.parametrize("workers, args, said", [("2", (), "2"), ("1", ("--workers", "3"), "3"),
                                                 ("2", ("--workers", "1"), None), ("1", ("-w", "2"), "2")])
def test_without_redis_several_workers_warn_at_start_that_limits_are_per_process(tmp_path, workers, args, said):
    """However gunicorn was told its worker count: GATEWAY_WORKERS, or --workers on its command line."""
    env = {"KEYCLOAK_URL": LIVE_URL, "KEYCLOAK_CLIENT_SECRET": DEV_SECRET, "GATEWAY_WORKERS": workers,
           "GATEWAY_THREADS": "8", "XDG_RUNTIME_DIR": str(tmp_path), "TMPDIR": str(tmp_path)}
    server = Gunicorn(env, args=args).wait_ready()
    time.sleep(0.5)
    warnings = [line for line in server.stop().splitlines() if "counted per worker process" in line]
    assert [json.loads(line)["message"] for line in warnings] == ([] if said is None else [
        f"rate limits are counted per worker process without GATEWAY_REDIS_URL: with {said} workers a client may get "
        "up to that many times each limit through"])
