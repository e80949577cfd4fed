"""Rate limits against a mocked Keycloak: who is counted, what counts, what a refusal says, that a refused attempt
never reaches Keycloak, and that a store that fails refuses instead of skipping."""

import pytest
import responses

from gateway import create_app
from tests.conftest import free_port, mock_config

TOKEN = "http://keycloak.test/auth/realms/edm/protocol/openid-connect/token"
CERTS = "http://keycloak.test/auth/realms/edm/protocol/openid-connect/certs"
EDM_429 = "code=429, message=too many login attempts"
DISABLED = {"error": "invalid_grant", "error_description": "Account disabled"}


def limited_app(**overrides):
    return create_app(mock_config(**{"GATEWAY_LIMIT_PER_USERNAME": "3/minute",
                                     "GATEWAY_LIMIT_PER_ADDRESS": "100/minute", **overrides}))


@pytest.fixture
def keycloak():
    """The mocked token endpoint: every login is refused as a disabled account (no look-up follows), unless a test
    adds another answer; `calls` tells what reached it."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(TOKEN, status=400, json=DISABLED)
        yield mock


def grants(mock):
    return sum(call.request.url == TOKEN for call in mock.calls)


def edm_login(client, username="ahmadakbar", address="10.0.0.1", **kwargs):
    return client.post("/api/login", json={"username": username, "password": "password"},
                       environ_base={"REMOTE_ADDR": address}, **kwargs)


def drf_login(client, username="ahmadakbar", address="10.0.0.1"):
    return client.post("/users/login/", json={"username": username, "password": "password"},
                       environ_base={"REMOTE_ADDR": address})


def test_failed_logins_of_one_username_are_limited_and_the_refusal_never_reaches_keycloak(keycloak):
    client = limited_app().test_client()
    answers = [edm_login(client, address=f"10.0.0.{i}") for i in range(3)]
    assert [(a.status_code, a.json) for a in answers] == [(400, "code=403, message=account disabled")] * 3
    assert grants(keycloak) == 3
    refused = edm_login(client, address="10.0.0.9")  # another address: the username is what is counted
    assert (refused.status_code, refused.json) == (429, EDM_429)
    assert 55 <= int(refused.headers["Retry-After"]) <= 60  # the oldest failure leaves the 1-minute window then
    assert grants(keycloak) == 3


def test_the_username_is_counted_whatever_its_letter_case_and_on_both_login_endpoints(keycloak):
    client = limited_app().test_client()
    edm_login(client, "AhmadAkbar")
    drf_login(client, "ahmadakbar")
    edm_login(client, "AHMADAKBAR")
    refused = drf_login(client, "aHmAdAkBaR")
    assert (refused.status_code, refused.json) == (429, {
        "detail": f"Request was throttled. Expected available in {refused.headers['Retry-After']} seconds."})
    assert grants(keycloak) == 3
    assert edm_login(client, "budisantoso").json == "code=403, message=account disabled"  # others go on


def test_successful_logins_do_not_count_per_username(keycloak, signer):
    keycloak.replace(responses.POST, TOKEN, json={"access_token": signer.token(), "refresh_token": "r",
                                                  "expires_in": 300})
    keycloak.get(CERTS, json=signer.jwks)
    client = limited_app().test_client()
    assert [edm_login(client).status_code for _ in range(6)] == [200] * 6


def test_every_attempt_counts_per_address_a_bad_payload_too(keycloak):
    client = limited_app(GATEWAY_LIMIT_PER_ADDRESS="4/minute").test_client()
    assert client.post("/api/login", json={}, environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code == 400
    assert client.post("/users/login/", data="{", content_type="application/json",
                       environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code == 400
    assert edm_login(client, "budisantoso").status_code == 400
    assert drf_login(client, "citralestari").status_code == 401
    refused = edm_login(client, "someoneelse")
    assert (refused.status_code, refused.json) == (429, EDM_429)
    assert grants(keycloak) == 2
    assert edm_login(client, "someoneelse", address="10.0.0.2").status_code == 400  # another address goes on


def test_a_payload_that_fails_validation_is_not_counted_per_username(keycloak):
    client = limited_app(GATEWAY_LIMIT_PER_USERNAME="1/minute").test_client()
    for _ in range(3):
        answer = client.post("/api/login", json={"username": "ahmadakbar", "password": "short"})
        assert answer.json == "code=400, message=payload is unknown"
    assert edm_login(client).json == "code=403, message=account disabled"
    assert edm_login(client).json == EDM_429


def test_other_post_endpoints_are_limited_per_address_each_on_its_own_and_gets_never(keycloak):
    client = limited_app(GATEWAY_LIMIT_PER_ADDRESS="2/minute").test_client()
    for path in ("/api/refresh", "/api/logout", "/users/refresh/", "/users/verify/"):
        statuses = [client.post(path, json={}).status_code for _ in range(3)]
        assert statuses == [400, 400, 429], path
    assert client.post("/api/refresh", json={}).json == EDM_429
    assert client.post("/users/verify/", json={}).json == {
        "detail": "Request was throttled. Expected available in "
                  f"{client.post('/users/verify/', json={}).headers['Retry-After']} seconds."}
    for path in ("/healthz", "/api/me", "/nowhere"):
        assert {client.get(path).status_code for _ in range(5)} != {429}, path


@pytest.mark.parametrize("setting", ["GATEWAY_LIMIT_PER_USERNAME", "GATEWAY_LIMIT_PER_ADDRESS"])
def test_off_disables_a_limit(keycloak, setting):
    other = "GATEWAY_LIMIT_PER_ADDRESS" if setting == "GATEWAY_LIMIT_PER_USERNAME" else "GATEWAY_LIMIT_PER_USERNAME"
    client = create_app(mock_config(**{setting: "off", other: "off"})).test_client()
    assert {edm_login(client).status_code for _ in range(120)} == {400}
    assert grants(keycloak) == 120


def test_retry_after_counts_down_with_the_window(keycloak, monkeypatch):
    import time

    client = limited_app(GATEWAY_LIMIT_PER_USERNAME="1/minute").test_client()
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)
    edm_login(client)
    assert edm_login(client).headers["Retry-After"] == "60"
    monkeypatch.setattr(time, "time", lambda: now + 45.5)
    assert edm_login(client).headers["Retry-After"] == "15"
    monkeypatch.setattr(time, "time", lambda: now + 61)
    assert edm_login(client).json == "code=403, message=account disabled"


def via_proxy(client, forwarded, username="u1"):
    """A login arriving from the reverse proxy at 10.0.0.1 with `X-Forwarded-For: forwarded`."""
    return edm_login(client, username, address="10.0.0.1", headers={"X-Forwarded-For": forwarded})


def test_a_forged_forwarded_for_does_not_escape_the_limit_when_no_proxy_is_trusted(keycloak):
    client = limited_app(GATEWAY_LIMIT_PER_ADDRESS="1/minute", GATEWAY_TRUSTED_PROXIES="0").test_client()
    assert via_proxy(client, "203.0.113.7").status_code == 400
    assert via_proxy(client, "198.51.100.99", "u2").json == EDM_429


def test_the_trusted_proxys_forwarded_for_is_the_client_address(keycloak):
    client = limited_app(GATEWAY_LIMIT_PER_ADDRESS="1/minute", GATEWAY_TRUSTED_PROXIES="1").test_client()
    assert via_proxy(client, "203.0.113.7").status_code == 400
    assert via_proxy(client, "198.51.100.99", "u2").status_code == 400  # another client behind the same proxy
    # What the client itself put before the proxy's entry is not trusted: it is still 203.0.113.7.
    assert via_proxy(client, "192.0.2.1, 203.0.113.7", "u3").json == EDM_429


def test_two_trusted_proxies(keycloak):
    client = limited_app(GATEWAY_LIMIT_PER_ADDRESS="1/minute", GATEWAY_TRUSTED_PROXIES="2").test_client()
    assert via_proxy(client, "203.0.113.7, 10.1.1.1").status_code == 400
    assert via_proxy(client, "192.0.2.1, 203.0.113.7, 10.1.1.2", "u2").json == EDM_429


def test_ipv6_clients_count_by_their_64(keycloak):
    client = limited_app(GATEWAY_LIMIT_PER_ADDRESS="1/minute").test_client()
    assert edm_login(client, address="2001:db8:1:2::1").status_code == 400
    assert edm_login(client, address="2001:db8:1:2:ffff::9").json == EDM_429
    assert edm_login(client, address="2001:db8:1:3::1").status_code == 400


@pytest.fixture
def dead_redis_url():
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.mark.parametrize("limits", ["on", "off"])
def test_a_store_that_cannot_be_reached_answers_503_never_skips(keycloak, dead_redis_url, limits):
    overrides = {"GATEWAY_REDIS_URL": dead_redis_url}
    if limits == "off":
        overrides.update(GATEWAY_LIMIT_PER_USERNAME="off", GATEWAY_LIMIT_PER_ADDRESS="off")
    client = limited_app(**overrides).test_client()
    answer = edm_login(client)
    assert (answer.status_code, answer.json) == (503, "code=503, message=authentication service unavailable")
    answer = drf_login(client)
    assert (answer.status_code, answer.json) == (503, {"detail": "Authentication service unavailable."})
    assert grants(keycloak) == 0
    # the mocked realm has no metadata
    assert client.get("/readyz").json == "code=503, message=redis, keycloak unavailable"
    assert client.get("/healthz").status_code == 200


def test_limits_in_redis_are_shared_by_every_app_using_it(keycloak, redis_url):
    one, two = (limited_app(GATEWAY_REDIS_URL=redis_url).test_client() for _ in range(2))
    assert [edm_login(c).status_code for c in (one, two, one)] == [400, 400, 400]
    assert edm_login(two).json == EDM_429
    assert grants(keycloak) == 3


def test_a_store_failure_while_charging_a_failed_login_is_the_503(keycloak, redis_url, monkeypatch):
    """A failed login is charged after the view answered: Redis failing right then is still the store's 503."""
    from limits.errors import StorageError

    from redis import ConnectionError

    app = limited_app(GATEWAY_REDIS_URL=redis_url, GATEWAY_LIMIT_PER_ADDRESS="off")  # the only charge comes after

    def hit_as_redis_goes_away(item, *identifiers, cost=1):
        raise StorageError(ConnectionError("Connection refused"))

    monkeypatch.setattr(app.extensions["limits"].limiter, "hit", hit_as_redis_goes_away)
    answer = edm_login(app.test_client())
    assert grants(keycloak) == 1
    assert (answer.status_code, answer.json) == (503, "code=503, message=authentication service unavailable")


def test_the_host_storage_sweeps_once_a_second_not_every_10_ms(keycloak):
    """limits' memory storage would start a sweep over every client's window every 10 ms (78% of a core per
    worker for 4,096 clients, measured); the gateway's storage sweeps once a second, and decides alike."""
    from gateway.limits import HostMemoryStorage

    client = limited_app(GATEWAY_LIMIT_PER_ADDRESS="3/minute").test_client()
    storage = client.application.extensions["limits"].storage
    assert type(storage) is HostMemoryStorage
    assert [edm_login(client).status_code for _ in range(4)] == [400, 400, 400, 429]
    assert storage.timer.is_alive() and storage.timer.interval == 1.0


def bff_limited_app(tmp_path, limit):
    return create_app(mock_config(GATEWAY_BFF="true", GATEWAY_SESSION_SECRET="s" * 32, TMPDIR=str(tmp_path),
                                  GATEWAY_LIMIT_PER_ADDRESS=limit, GATEWAY_LIMIT_PER_USERNAME="off"))


def login_start(client, method="GET", address="10.0.0.1"):
    return client.open("/bff/login?returnUrl=/orders", method=method, environ_base={"REMOTE_ADDR": address})


def test_login_starts_count_per_address_and_a_refused_one_sets_no_cookie(tmp_path, keycloak):
    client = bff_limited_app(tmp_path, "3/minute").test_client()
    started = [login_start(client), login_start(client, "HEAD"), login_start(client)]
    assert [(a.status_code, "__Host-edm-login=" in a.headers.get("Set-Cookie", "")) for a in started] == [
        (302, True)] * 3
    for method in ("GET", "HEAD"):
        refused = login_start(client, method)
        assert (refused.status_code, refused.headers.get("Set-Cookie"), refused.headers["Cache-Control"]) == (
            429, None, "no-store")
        assert 55 <= int(refused.headers["Retry-After"]) <= 60  # the first start leaves the 1-minute window then
    assert login_start(client).json == EDM_429
    assert login_start(client, address="10.0.0.2").status_code == 302  # another address goes on
    # A count of its own: the password logins of the same address are not held back by the login starts.
    assert edm_login(client).json == "code=403, message=account disabled"
    assert grants(keycloak) == 1


def test_of_all_the_gets_only_login_starts_are_limited(tmp_path, keycloak):
    client = bff_limited_app(tmp_path, "1/minute").test_client()
    assert login_start(client).status_code == 302
    assert login_start(client).status_code == 429
    assert client.options("/bff/login").status_code != 429  # a preflight stores nothing
    for path in ("/healthz", "/bff/callback", "/nowhere"):
        assert {client.get(path).status_code for _ in range(3)} != {429}, path
