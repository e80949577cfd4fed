"""POST /backchannel-logout against a mocked realm (its keys a stand-in signer's): a genuine logout token ends its
session on every surface, once; every forgery or odd token is 400 in Back-Channel Logout 1.0's words and ends
nothing; a burst from one address is never rate-limited. tests/test_session_integrity_keycloak.py does it with the
real Keycloak's own logout tokens."""

import base64
import json
import secrets
import time

import pytest
import responses

from gateway import create_app
from tests.conftest import ISSUER, Signer, mock_config

CERTS = "http://keycloak.test/auth/realms/edm/protocol/openid-connect/certs"
EVENT = "http://schemas.openid.net/event/backchannel-logout"
INVALID_TOKEN = "code=401, message=access token is invalid or expired"


def _b64(value):
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(signer, claims, header=None):
    """A JWS of `claims` signed by `signer`'s key, with this header."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    head = _b64(header or {"alg": "RS256", "typ": "logout+jwt", "kid": signer.key.kid})
    body = _b64(claims)
    signature = signer.key.get_op_key("sign").sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{_b64(signature)}"


def logout_claims(**changes):
    now = int(time.time())
    claims = {"iat": now, "exp": now + 120, "jti": secrets.token_hex(8), "iss": ISSUER, "aud": "edmportal",
              "sub": "mock-user-id", "typ": "Logout", "sid": "kc-session-1", "events": {EVENT: {}}, **changes}
    return {name: value for name, value in claims.items() if value is not None}


@pytest.fixture
def realm(signer):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(CERTS, json=signer.jwks)
        yield mock


@pytest.fixture
def app(tmp_path):
    return create_app(mock_config(TMPDIR=str(tmp_path), GATEWAY_LIMIT_PER_ADDRESS="5/minute"))


def post(client, token):
    return client.post("/backchannel-logout", data={"logout_token": token} if token is not None else {})


def me(client, token):
    return client.get("/api/me", headers={"Authorization": f"Bearer {token}"})


def test_a_genuine_logout_token_ends_its_session_on_every_surface_once(client, realm, signer):
    access = signer.token(sid="kc-session-1")
    other = signer.token(sid="kc-session-2")
    assert me(client, access).status_code == 200
    token = sign(signer, logout_claims())
    answer = post(client, token)
    assert (answer.status_code, answer.data, answer.headers["Cache-Control"]) == (200, b"", "no-store")
    answer = me(client, access)
    assert (answer.status_code, answer.json) == (401, INVALID_TOKEN)
    assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="edm", error="invalid_token"')
    answer = client.post("/users/verify/", json={"token": access})
    assert (answer.status_code, answer.json) == (401, {"detail": "Token is invalid", "code": "token_not_valid"})
    assert me(client, other).status_code == 200  # another session of the same user goes on
    replayed = post(client, token)
    assert (replayed.status_code, replayed.json) == (400, {
        "error": "invalid_request", "error_description": "the logout token is invalid: a jti seen before: a "
                                                         "replayed logout token"})


def test_a_logout_token_with_only_a_sub_ends_every_session_of_the_user_begun_before(client, realm, signer):
    before = signer.token(sid="kc-session-1", iat=int(time.time()) - 5)
    assert post(client, sign(signer, logout_claims(sid=None))).status_code == 200
    assert me(client, before).status_code == 401
    assert me(client, signer.token(sid="kc-session-3", sub="another-user")).status_code == 200


def _forgeries(signer):
    now = int(time.time())
    other_key = Signer(kid=signer.key.kid)  # another key that names the realm's kid
    good = logout_claims()
    head, body, signature = sign(signer, good).split(".")
    return {
        "another key with the realm's kid": sign(other_key, good),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'logout+jwt', 'kid': signer.key.kid})}.{body}.",
        "alg HS256": f"{_b64({'alg': 'HS256', 'kid': signer.key.kid})}.{body}.{signature}",
        "a changed payload": f"{head}.{_b64({**good, 'sid': 'kc-session-9'})}.{signature}",
        "not a JWT": "not-a-jwt",
        "an empty one": "",
        "two segments": f"{head}.{body}",
        "an access token's typ header": sign(signer, good, {"alg": "RS256", "typ": "JWT", "kid": signer.key.kid}),
        "an unknown kid": sign(signer, good, {"alg": "RS256", "kid": "no-such-key"}),
        "no events": sign(signer, logout_claims(events=None)),
        "another event": sign(signer, logout_claims(events={"http://example.org/other": {}})),
        "an event that is no object": sign(signer, logout_claims(events={EVENT: "yes"})),
        "another issuer": sign(signer, logout_claims(iss="http://localhost:8180/auth/realms/master")),
        "another audience": sign(signer, logout_claims(aud="admin-cli")),
        "no audience": sign(signer, logout_claims(aud=None)),
        "expired": sign(signer, logout_claims(exp=now - 60)),
        "no exp": sign(signer, logout_claims(exp=None)),
        "issued long ago": sign(signer, logout_claims(iat=now - 3600, exp=now + 60)),
        "issued in the future": sign(signer, logout_claims(iat=now + 600, exp=now + 720)),
        "no iat": sign(signer, logout_claims(iat=None)),
        "neither sid nor sub": sign(signer, logout_claims(sid=None, sub=None)),
        "a sid that is no string": sign(signer, logout_claims(sid=42)),
        "an empty sid": sign(signer, logout_claims(sid="")),
        "a nonce": sign(signer, logout_claims(nonce="n-1")),
        "no jti": sign(signer, logout_claims(jti=None)),
        "a payload that is no object": sign(signer, ["not", "an", "object"]),
    }


FORGERY_NAMES = list(_forgeries(Signer()))


def test_a_store_that_fails_while_a_session_ends_leaves_the_token_good_for_keycloaks_next_attempt(
        client, realm, signer, monkeypatch):
    from gateway.errors import StoreUnavailable

    store = client.application.extensions["store"]
    append = store.append

    def fails_once(*args):
        monkeypatch.setattr(store, "append", append)
        raise StoreUnavailable("append: ConnectionError")

    monkeypatch.setattr(store, "append", fails_once)
    access, token = signer.token(sid="kc-session-1"), sign(signer, logout_claims())
    answer = post(client, token)
    assert (answer.status_code, answer.json) == (503, "code=503, message=authentication service unavailable")
    assert me(client, access).status_code == 200  # nothing ended yet
    assert post(client, token).status_code == 200  # sent again: now it ends the session
    assert (me(client, access).status_code, post(client, token).status_code) == (401, 400)


@pytest.mark.parametrize("name", FORGERY_NAMES)
def test_a_forged_or_odd_logout_token_is_refused_and_ends_nothing(client, realm, signer, name):
    access = signer.token(sid="kc-session-1")
    answer = post(client, _forgeries(signer)[name])
    assert answer.status_code == 400, name
    assert sorted(answer.json) == ["error", "error_description"] and answer.json["error"] == "invalid_request"
    assert answer.headers["Cache-Control"] == "no-store"
    assert me(client, access).status_code == 200


def test_no_token_at_all_is_refused(client, realm):
    for form in ({}, {"token": "x"}):
        answer = client.post("/backchannel-logout", data=form)
        assert (answer.status_code, answer.json) == (400, {
            "error": "invalid_request", "error_description": "the request has no logout_token"})


def test_a_burst_of_logouts_from_one_address_is_not_rate_limited(client, realm, signer):
    answers = [post(client, sign(signer, logout_claims(sid=f"kc-session-{n}"))).status_code for n in range(20)]
    assert answers == [200] * 20  # the per-address limit is 5/minute here, which other POSTs still meet:
    assert [client.post("/api/refresh", json={}).status_code for _ in range(6)] == [400] * 5 + [429]


def test_the_attempt_is_audited_and_counted(client, realm, signer, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        post(client, sign(signer, logout_claims()))
        post(client, "garbage")
    events = [(r.event, r.outcome, r.user_id) for r in caplog.records if r.name == "gateway.audit"]
    assert events == [("backchannel logout", "success", "mock-user-id"),
                      ("backchannel logout", "invalid_logout_token", None)]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'edm_gateway_attempts_total{endpoint="backchannel_logout",outcome="success"}' in metrics
