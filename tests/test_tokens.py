"""The realm's key set ages: a key removed from the realm stops verifying within GATEWAY_KEYS_MAX_AGE, the set is
re-fetched by one request at a time, and a failed re-fetch neither lets expired keys verify nor hammers Keycloak."""

import json
import threading
import time

import pytest
import requests
import responses

from gateway import create_app
from tests.conftest import MOCK_URL, Signer, mock_config

CERTS = f"{MOCK_URL}realms/edm/protocol/openid-connect/certs"
INVALID = (401, "code=401, message=access token is invalid or expired")


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def gateway():
    """An app whose key set is 60 s old at most, on a clock the test moves."""
    app = create_app(mock_config(GATEWAY_KEYS_MAX_AGE="60"))
    clock = FakeClock()
    app.extensions["gateway"].keys.clock = clock
    return app.test_client(), clock, app.extensions["gateway"].keys


def me(client, token):
    response = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    return response.status_code, response.json


def test_a_key_removed_from_the_realm_stops_verifying_within_the_maximum_age(gateway):
    client, clock, _ = gateway
    old, new = Signer(kid="old-key"), Signer(kid="new-key")
    token = old.token(sub="u-1")
    with responses.RequestsMock() as realm:
        realm.get(CERTS, json={"keys": old.jwks["keys"] + new.jwks["keys"]})
        assert me(client, token)[0] == 200
        realm.replace(responses.GET, CERTS, json=new.jwks)  # an admin removed the old key
        clock.now += 50  # younger than 54 s (nine tenths of 60): the set is kept as it is
        assert me(client, token)[0] == 200
        clock.now += 11  # 61 s: past the maximum age, the set is fetched again before any use
        assert me(client, token) == INVALID
        assert me(client, new.token(sub="u-1"))[0] == 200
        assert len(realm.calls) == 2


def test_near_its_maximum_age_one_request_refreshes_the_set(gateway):
    client, clock, keys = gateway
    signer = Signer(kid="k1")
    with responses.RequestsMock() as realm:
        realm.get(CERTS, json=signer.jwks)
        assert me(client, signer.token())[0] == 200
        clock.now += 55  # past nine tenths: the next request re-fetches, the set was still good
        assert [me(client, signer.token())[0] for _ in range(5)] == [200] * 5
        assert len(realm.calls) == 2
        clock.now += 55  # 55 s after the refresh, not 110 s after the first fetch: still in date
        assert me(client, signer.token())[0] == 200
        assert len(realm.calls) == 3


def test_a_failed_refresh_keeps_the_keys_until_they_expire_and_is_not_repeated_per_request(gateway):
    client, clock, keys = gateway
    signer = Signer(kid="k1")
    with responses.RequestsMock() as realm:
        realm.get(CERTS, json=signer.jwks)
        assert me(client, signer.token())[0] == 200
        realm.replace(responses.GET, CERTS, body=requests.ConnectionError("refused"))
        clock.now += 55
        assert [me(client, signer.token())[0] for _ in range(10)] == [200] * 10  # Keycloak down: keys still good
        assert len(realm.calls) == 2  # one try, then none within the re-fetch interval
        clock.now += 6  # expired, and Keycloak still down: no stale key verifies anything
        assert me(client, signer.token()) == (503, "code=503, message=authentication service unavailable")
        realm.replace(responses.GET, CERTS, json=signer.jwks)
        clock.now += keys.refetch_interval
        assert me(client, signer.token())[0] == 200


def test_past_the_maximum_age_concurrent_requests_cause_one_fetch(gateway):
    client, clock, keys = gateway
    signer = Signer(kid="k1")
    token = signer.token()
    with responses.RequestsMock() as realm:
        realm.get(CERTS, json=signer.jwks)
        assert me(client, token)[0] == 200
        clock.now += 120
        slow = threading.Event()

        def slow_certs(request):
            slow.wait(0.3)  # long enough for every thread to arrive while the fetch is under way
            return 200, {}, json.dumps(signer.jwks)

        realm.remove(responses.GET, CERTS)
        realm.add_callback(responses.GET, CERTS, callback=slow_certs)
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(me(client, token)[0])) for _ in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert answers == [200] * 8
        assert len(realm.calls) == 2


def test_the_maximum_age_is_five_minutes_by_default():
    keys = create_app(mock_config()).extensions["gateway"].keys
    assert keys.max_age == 300.0


def test_the_real_clock_ages_the_set_too():
    """No fake clock: a set older than its maximum age is fetched again."""
    app = create_app(mock_config(GATEWAY_KEYS_MAX_AGE="0.2"))
    signer = Signer(kid="k1")
    with responses.RequestsMock() as realm:
        realm.get(CERTS, json=signer.jwks)
        client = app.test_client()
        assert me(client, signer.token())[0] == 200
        time.sleep(0.25)
        assert me(client, signer.token())[0] == 200
        assert len(realm.calls) == 2


def test_a_remembered_token_still_expires(gateway):
    client, _, keys = gateway
    signer = Signer(kid="k1")
    token = signer.token(exp=int(time.time()) + 60)
    tokens = client.application.extensions["gateway"].tokens
    with responses.RequestsMock() as realm:
        realm.get(CERTS, json=signer.jwks)
        assert me(client, token)[0] == 200
        assert me(client, token)[0] == 200  # answered from memory
        tokens.clock = lambda: time.time() + 91  # past exp and its 30 s of leeway
        assert me(client, token) == INVALID


def test_a_remembered_token_stops_verifying_once_its_key_is_gone(gateway):
    client, clock, _ = gateway
    old, new = Signer(kid="old-key"), Signer(kid="new-key")
    token = old.token()
    with responses.RequestsMock() as realm:
        realm.get(CERTS, json=old.jwks)
        assert [me(client, token)[0] for _ in range(3)] == [200] * 3
        realm.replace(responses.GET, CERTS, json=new.jwks)
        clock.now += 61
        assert me(client, token) == INVALID


def test_remembered_tokens_are_bounded(gateway):
    client, _, _ = gateway
    signer = Signer(kid="k1")
    tokens = client.application.extensions["gateway"].tokens
    tokens.CACHE_SIZE = 3
    with responses.RequestsMock() as realm:
        realm.get(CERTS, json=signer.jwks)
        assert [me(client, signer.token(sub=f"u-{i}"))[0] for i in range(5)] == [200] * 5
    assert len(tokens._verified) == 3
