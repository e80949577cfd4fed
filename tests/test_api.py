"""GET /api/me against a mocked realm: which tokens it takes, which it refuses, and that it stays local."""

import base64
import json
import time

import pytest
import requests
import responses

from tests.conftest import Signer

CERTS = "http://keycloak.test/auth/realms/edm/protocol/openid-connect/certs"
MISSING = "code=401, message=missing access token"
INVALID = "code=401, message=access token is invalid or expired"


@pytest.fixture
def realm(signer):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(CERTS, json=signer.jwks)
        yield mock


def me(client, authorization=None):
    return client.get("/api/me", headers={"Authorization": authorization} if authorization is not None else {})


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "JWT", "jwt"])
def test_me_with_a_valid_token(client, realm, signer, scheme):
    token = signer.token(sub="u-1", preferred_username="ahmadakbar", email="ahmadakbar@gmail.com",
                         email_verified=False, given_name="Ahmad", family_name="Akbar",
                         realm_access={"roles": ["offline_access", "default-roles-edm"]})
    response = me(client, f"{scheme} {token}")
    assert response.status_code == 200
    assert response.json == {"status": 200, "message": "u-1", "user": {
        "id": "u-1", "username": "ahmadakbar", "email": "ahmadakbar@gmail.com", "emailVerified": False,
        "firstName": "Ahmad", "lastName": "Akbar", "roles": ["default-roles-edm", "offline_access"]}}
    assert list(response.json) == ["status", "message", "user"]


def test_claims_a_token_lacks_are_null_and_roles_empty(client, realm, signer):
    response = me(client, f"Bearer {signer.token(sub='u-2', preferred_username=None)}")
    assert response.json["user"] == {"id": "u-2", "username": None, "email": None, "emailVerified": None,
                                     "firstName": None, "lastName": None, "roles": []}


@pytest.mark.parametrize("authorization", [None, "", "Basic dXNlcjpwYXNz", "Token abc", "Bearerabc"])
def test_missing_access_token(client, realm, authorization):
    response = me(client, authorization)
    assert (response.status_code, response.json) == (401, MISSING)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="edm"'


def _b64(data):
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _tamper(token, part, index=10):
    pieces = token.split(".")
    text = pieces[part]
    pieces[part] = text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1:]
    return ".".join(pieces)


def invalid_tokens(signer):
    good = signer.token()
    now = int(time.time())
    header, payload, _ = good.split(".")
    return {
        "empty": "",
        "garbage": "not-a-token",
        "two parts": "abc.def",
        "bad base64 header": "%%%.e30.sig",
        "header not an object": _b64([1]) + ".e30.sig",
        "signature changed": _tamper(good, 2),
        "payload changed": _tamper(good, 1),
        "alg none": _b64({"alg": "none", "kid": "mock-key"}) + "." + payload + ".",
        "alg HS256 with the public key": _b64({"alg": "HS256", "kid": "mock-key"}) + "." + payload + ".c2ln",
        "unknown kid": Signer(kid="other").token(),
        "kid not a string": _b64({"alg": "RS256", "kid": ["mock-key"]}) + "." + payload + ".c2ln",
        "expired beyond the leeway": signer.token(exp=now - 31),
        "no exp": signer.token(exp=None),
        "exp not a number": signer.token(exp="tomorrow"),
        "another issuer": signer.token(iss="http://localhost:8180/auth/realms/master"),
        "another client": signer.token(azp="admin-cli"),
        "a refresh token": signer.token(typ="Refresh"),
        "an id token": signer.token(typ="ID"),
        "no sub": signer.token(sub=None),
        "sub not a string": signer.token(sub=42),
        "oversized": "a" * 9000,
        "deeply nested header": _nested() + "." + payload + ".c2ln",
        "deeply nested payload": header + "." + _nested() + ".c2ln",
        "padded segments": header + "==." + payload + "." + good.split(".")[2],
        "signature not written canonically": header + "." + payload + "." + _uncanonical(good.split(".")[2]),
        "four segments": good + ".e30",
        "a critical extension": _resign(signer, {"alg": "RS256", "kid": "mock-key", "crit": ["exp"]}, payload),
        "not valid before a minute from now": signer.token(nbf=now + 60),
    }


def _uncanonical(segment):
    """The same bytes, written with a stray bit set in the last character: 256 bytes of RSA signature take 342
    characters, the last carrying 4 unused bits."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(segment) % 4 == 2
    changed = segment[:-1] + alphabet[alphabet.index(segment[-1]) ^ 1]
    assert base64.urlsafe_b64decode(changed + "==") == base64.urlsafe_b64decode(segment + "==")
    return changed


def _resign(signer, header, payload):
    """A token with this header and payload, really signed by the realm's key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    head = _b64(header)
    private = signer.key.get_op_key("sign")
    signature = private.sign(f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{payload}." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


def _nested(depth=3000):
    return base64.urlsafe_b64encode(b"[" * depth).rstrip(b"=").decode()


@pytest.mark.parametrize("case", list(invalid_tokens(Signer(kid="mock-key"))))
def test_invalid_access_token(client, realm, signer, case):
    response = me(client, f"Bearer {invalid_tokens(signer)[case]}")
    assert (response.status_code, response.json) == (401, INVALID)
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="edm", error="invalid_token"')


def test_expiry_leeway_is_thirty_seconds(client, realm, signer):
    assert me(client, f"Bearer {signer.token(exp=int(time.time()) - 25)}").status_code == 200


def test_me_makes_no_upstream_call_while_the_keys_are_cached(client, realm, signer):
    token = signer.token()
    answers = [me(client, f"Bearer {token}").status_code for _ in range(20)]
    assert answers == [200] * 20
    assert len(realm.calls) == 1  # the one fetch of the realm's keys


def test_forged_kids_cannot_make_the_gateway_hammer_keycloak(app, realm, signer):
    client, keys = app.test_client(), app.extensions["gateway"].keys
    forged = [Signer(kid=f"forged-{i}").token() for i in range(3)]  # made first: key generation takes time
    keys.refetch_interval = 3600
    assert me(client, f"Bearer {signer.token()}").status_code == 200
    answers = [me(client, f"Bearer {forged[i % 3]}").status_code for i in range(30)]
    assert answers == [401] * 30
    assert len(realm.calls) == 1  # within the re-fetch interval: no re-fetch at all
    keys.refetch_interval = 0  # as if the interval had passed
    assert me(client, f"Bearer {forged[0]}").status_code == 401
    assert len(realm.calls) == 2  # one re-fetch for the unknown kid, then refused


def test_a_failing_key_fetch_is_not_repeated_for_every_forged_kid(app, signer):
    client, keys = app.test_client(), app.extensions["gateway"].keys
    with responses.RequestsMock() as mock:
        mock.get(CERTS, body=requests.ReadTimeout("slow"))
        forged = Signer(kid="forged").token()
        answers = [me(client, f"Bearer {forged}") for _ in range(10)]
        assert [(a.status_code, a.json) for a in answers] == [
            (504, "code=504, message=authentication service timed out")] * 10
        assert len(mock.calls) == 1  # the failure is remembered for the re-fetch interval
        keys.refetch_interval = 0
        mock.replace(responses.GET, CERTS, json=signer.jwks)
        assert me(client, f"Bearer {signer.token()}").status_code == 200
        assert len(mock.calls) == 2


def test_keycloak_down_while_a_key_is_unknown(client, signer):
    with responses.RequestsMock() as mock:
        mock.get(CERTS, body=requests.ConnectionError("refused"))
        response = me(client, f"Bearer {signer.token()}")
    assert (response.status_code, response.json) == (503, "code=503, message=authentication service unavailable")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_me_wrong_method(client, method):
    response = client.open("/api/me", method=method)
    assert (response.status_code, response.json) == (405, "code=405, message=method not allowed")
    assert "GET" in response.headers["Allow"]
