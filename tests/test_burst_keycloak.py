"""A burst of logins for one username cannot starve everyone else: under gunicorn started with its own `--threads 4`
(2 workers; GATEWAY_THREADS left at its default of 8, which the workers must not believe) against the real
Keycloak, 80 concurrent logins of one user get 200 or the 429 string at once, some of them the 429, and another
user's login during the burst answers 200 promptly (measured before the fix: 4.3 to 6.0 s, and no 429 at all). On
one host without Redis (rate limits off: the bound is not a rate limit), and through Redis with the default
limits."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import DEV_SECRET, LIVE_URL, Gunicorn
from tests.loads import login, raw_login

BURST = 80
# Generous for a loaded 2-core machine (1.6 s seen at a load of 9), under the 4.3-6 s of a worker whose every
# thread waits in line.
PROMPT_SECONDS = 3.0


@pytest.fixture(params=["host, limits off", "redis, limits on"])
def server(request, tmp_path, kc):
    env = {"KEYCLOAK_URL": LIVE_URL, "KEYCLOAK_CLIENT_SECRET": DEV_SECRET, "GATEWAY_WORKERS": "2",
           "XDG_RUNTIME_DIR": str(tmp_path)}
    if request.param.startswith("host"):
        env.update(GATEWAY_LIMIT_PER_USERNAME="off", GATEWAY_LIMIT_PER_ADDRESS="off")
    else:
        env.update(GATEWAY_REDIS_URL=request.getfixturevalue("redis_url"))
    gateway = Gunicorn(env, args=["--threads", "4"]).wait_ready()
    yield gateway
    gateway.stop()


def test_a_burst_for_one_username_does_not_starve_another_user(server, kc):
    target, other = kc.create_user(), kc.create_user()
    baseline = login(server.url, other)  # warm: the other user's first login is not what is measured
    start = threading.Barrier(BURST + 1)

    def burst_login(_):
        start.wait()
        return raw_login(server.url, target)

    with ThreadPoolExecutor(max_workers=BURST) as pool:
        futures = [pool.submit(burst_login, i) for i in range(BURST)]
        start.wait()
        time.sleep(0.1)  # the burst is in the gateway's queues
        others = login(server.url, other)
        answers = [future.result() for future in futures]

    outcomes = {(a.status, a.body if a.status != 200 else "tokens", a.retry_after if a.status == 429 else None)
                for a in answers}
    assert outcomes <= {(200, "tokens", None), (429, "code=429, message=too many login attempts", "1")}, outcomes
    succeeded = [a for a in answers if a.status == 200]
    assert succeeded and all(a.body["message"] == target.id for a in succeeded)
    # Some are refused (a worker's 4 threads never all wait in line), at once, not after waiting a turn (the time
    # includes the wait for a free server thread).
    assert len(succeeded) < BURST
    assert max(a.seconds for a in answers if a.status == 429) < PROMPT_SECONDS
    assert (others.status, others.body["message"]) == (200, other.id)
    assert others.seconds < PROMPT_SECONDS
    assert kc.admin.get_bruteforce_detection_status(target.id)["numFailures"] == 0
    print(f"\nburst of {BURST}: {len(succeeded)} logged in, {BURST - len(succeeded)} refused (slowest refusal "
          f"{max(a.seconds for a in answers if a.status == 429):.2f} s); the other user's login took "
          f"{others.seconds:.2f} s (alone, just before: {baseline.seconds:.2f} s)")
