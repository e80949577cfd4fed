"""The SimpleJWT profile against the real thing: for the same request, an in-process DRF + SimpleJWT backend and
this gateway (on the real Keycloak) answer the same status, the same body and the same auth headers."""

import base64
import bz2
import json
import zlib

import pytest

from tests import drf_reference


def multipart(fields):
    boundary = "----edm-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()]
    return ("".join(parts) + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}"


def as_json(value):
    return json.dumps(value).encode(), "application/json"


# (method, path, body, content type): each sent as the same bytes to both backends.
CASES = {
    "login: both fields missing (the seed's 400)": ("POST", "/users/login/", *as_json({})),
    "login: empty JSON body": ("POST", "/users/login/", b"", "application/json"),
    "login: blank fields": ("POST", "/users/login/", *as_json({"username": "", "password": "   "})),
    "login: null fields": ("POST", "/users/login/", *as_json({"username": None, "password": None})),
    "login: not strings": ("POST", "/users/login/", *as_json({"username": True, "password": ["x"]})),
    "login: an object": ("POST", "/users/login/", *as_json({"username": {"a": 1}, "password": "password"})),
    "login: numbers taken as strings": ("POST", "/users/login/", *as_json({"username": 12345, "password": 1.5})),
    "login: unknown user (the seed's 401)": ("POST", "/users/login/",
                                             *as_json({"username": "nosuchuser42", "password": "password"})),
    "login: null character": ("POST", "/users/login/", *as_json({"username": "ahmad\u0000akbar", "password": "x"})),
    "login: lone surrogate": ("POST", "/users/login/", b'{"username": "a\\ud800", "password": "x"}',
                              "application/json"),
    "login: a list": ("POST", "/users/login/", *as_json(["ahmadakbar", "password"])),
    "login: a string": ("POST", "/users/login/", *as_json("ahmadakbar")),
    "login: a number": ("POST", "/users/login/", *as_json(42)),
    "login: null": ("POST", "/users/login/", *as_json(None)),
    "login: malformed JSON": ("POST", "/users/login/", b"{", "application/json"),
    "login: trailing comma": ("POST", "/users/login/", b'{"username": "a",}', "application/json"),
    "login: NaN": ("POST", "/users/login/", b'{"username": NaN}', "application/json"),
    "login: -Infinity": ("POST", "/users/login/", b'{"password": -Infinity}', "application/json"),
    "login: whitespace body": ("POST", "/users/login/", b"   ", "application/json"),
    "login: not UTF-8": ("POST", "/users/login/", b'{"username": "\xff"}', "application/json"),
    "login: byte-order mark": ("POST", "/users/login/", b'\xef\xbb\xbf{"username": "a"}', "application/json"),
    "login: text/plain": ("POST", "/users/login/", b"username=a&password=b", "text/plain"),
    "login: octet-stream": ("POST", "/users/login/", b"\x00\x01", "application/octet-stream"),
    "login: empty text/plain body": ("POST", "/users/login/", b"", "text/plain"),
    "login: form, password missing": ("POST", "/users/login/", b"username=ahmadakbar",
                                      "application/x-www-form-urlencoded"),
    "login: form, blank username": ("POST", "/users/login/", b"username=&password=password",
                                    "application/x-www-form-urlencoded"),
    "login: multipart, username missing": ("POST", "/users/login/", *multipart({"password": "password"})),
    "login: unknown charset": ("POST", "/users/login/", b'{"username": "a"}', "application/json; charset=bogus"),
    # charsets that are codecs but no text encodings: DRF refuses them (decoding would inflate a zlib or bz2 body)
    "login: charset rot13": ("POST", "/users/login/", b'{"hfreanzr": "n"}', "application/json; charset=rot13"),
    "login: charset base64": ("POST", "/users/login/", base64.b64encode(b'{"username": "a", "password": "b"}'),
                              "application/json; charset=base64"),
    "login: charset zlib": ("POST", "/users/login/", zlib.compress(b'{"username": "a", "password": "b"}'),
                            "application/json; charset=zlib"),
    "login: charset bz2": ("POST", "/users/login/", bz2.compress(b'{"username": "a" }'),
                           "application/json; charset=bz2"),
    "login: charset hex": ("POST", "/users/login/", b"7b7d", "application/json; charset=hex"),
    "login: charset uu": ("POST", "/users/login/", b"{}", "application/json; charset=uu"),
    "login: charset quopri": ("POST", "/users/login/", b"{}", "application/json; charset=quopri"),
    "login: charset undefined": ("POST", "/users/login/", b"{}", "application/json; charset=undefined"),
    "login: charset in capitals, quoted": ("POST", "/users/login/", b"{}", 'application/json; charset="ROT_13"'),
    "login: form, charset rot13": ("POST", "/users/login/", b"username=a&password=b",
                                   "application/x-www-form-urlencoded; charset=rot13"),
    "login: multipart, charset base64": ("POST", "/users/login/", *(lambda body, ct: (body, f"{ct}; charset=base64"))(
        *multipart({"username": "a", "password": "b"}))),
    "login: text/plain, charset rot13": ("POST", "/users/login/", b"x", "text/plain; charset=rot13"),
    "login: empty body, charset rot13": ("POST", "/users/login/", b"", "application/json; charset=rot13"),
    "login: UTF-16 without a byte-order mark": ("POST", "/users/login/", '{"username": "a"}'.encode("utf-16-le"),
                                                "application/json; charset=utf-16"),
    "login: UTF-16 with its byte-order mark": ("POST", "/users/login/", '{"username": "a"}'.encode("utf-16"),
                                               "application/json; charset=utf-16"),
    "refresh: charset base64": ("POST", "/users/refresh/", base64.b64encode(b'{"refresh": "x"}'),
                                "application/json; charset=base64"),
    "verify: charset zlib": ("POST", "/users/verify/", zlib.compress(b'{"token": "x"}'),
                             "application/json; charset=zlib"),
    "login: multipart without a boundary": ("POST", "/users/login/", b"username=a", "multipart/form-data"),
    "login: multipart file parts": ("POST", "/users/login/", (
        b'------b\r\nContent-Disposition: form-data; name="username"; filename="u.txt"\r\n\r\nahmadakbar\r\n'
        b'------b\r\nContent-Disposition: form-data; name="password"\r\n\r\npassword\r\n------b--\r\n'),
        "multipart/form-data; boundary=----b"),
    "login: GET": ("GET", "/users/login/", b"", None),
    "login: PUT": ("PUT", "/users/login/", b"", None),
    "login: DELETE": ("DELETE", "/users/login/", b"", None),
    "refresh: missing": ("POST", "/users/refresh/", *as_json({})),
    "refresh: blank": ("POST", "/users/refresh/", *as_json({"refresh": " "})),
    "refresh: garbage": ("POST", "/users/refresh/", *as_json({"refresh": "garbage"})),
    "refresh: three dots": ("POST", "/users/refresh/", *as_json({"refresh": "a.b.c"})),
    "refresh: GET": ("GET", "/users/refresh/", b"", None),
    "verify: missing": ("POST", "/users/verify/", *as_json({})),
    "verify: null": ("POST", "/users/verify/", *as_json({"token": None})),
    "verify: garbage": ("POST", "/users/verify/", *as_json({"token": "garbage"})),
    "verify: form garbage": ("POST", "/users/verify/", b"token=x.y.z", "application/x-www-form-urlencoded"),
}


def drf_answer(method, path, body, content_type):
    response = drf_reference.client().generic(method, path, data=body,
                                              content_type=content_type or "application/octet-stream")
    # DRF sends `Allow` on every answer; it matters (and is compared) only on a 405.
    return (response.status_code, json.loads(response.content), response.headers.get("WWW-Authenticate"),
            response.headers.get("Allow") if response.status_code == 405 else None)


def gateway_answer(client, method, path, body, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.open(path, method=method, data=body, headers=headers)
    return (response.status_code, json.loads(response.get_data()),
            response.headers.get("WWW-Authenticate"), response.headers.get("Allow") if response.status_code == 405
            else None)


@pytest.mark.parametrize("case", list(CASES))
def test_same_answer_as_drf_simplejwt(live_client, kc, case):
    method, path, body, content_type = CASES[case]
    reference = drf_answer(method, path, body, content_type)
    assert gateway_answer(live_client, method, path, body, content_type) == reference


def test_wrong_password_of_an_existing_user(live_client, kc):
    user = kc.create_user(prefix="ahmad")
    reference = drf_answer("POST", "/users/login/", *as_json({"username": drf_reference.USERNAME, "password": "nope"}))
    ours = gateway_answer(live_client, "POST", "/users/login/", *as_json({"username": user.username,
                                                                          "password": "nope"}))
    assert ours == reference == (401, {"detail": "No active account found with the given credentials"},
                                 'JWT realm="api"', None)


def test_success_has_the_same_keys_in_the_same_order(live_client, kc):
    reference = drf_reference.client().post("/users/login/", {"username": "ahmadakbar", "password": "password"})
    ours = live_client.post("/users/login/", data={"username": "ahmadakbar", "password": "password"})
    assert (ours.status_code, list(ours.json)) == (reference.status_code, list(reference.json())) == (
        200, ["refresh", "access"])
    refreshed_reference = drf_reference.client().post("/users/refresh/", {"refresh": reference.json()["refresh"]})
    refreshed = live_client.post("/users/refresh/", data={"refresh": ours.json["refresh"]})
    assert (refreshed.status_code, list(refreshed.json)) == (
        refreshed_reference.status_code, list(refreshed_reference.json())) == (200, ["access", "refresh"])
    for token in ("access", "refresh"):  # the rotated pair (the login's refresh token is spent)
        assert live_client.post("/users/verify/", json={"token": refreshed.json[token]}).json == {} == (
            drf_reference.client().post("/users/verify/", {"token": refreshed_reference.json()[token]}).json())


def test_access_token_where_a_refresh_token_belongs(live_client, kc):
    reference_access = drf_reference.client().post("/users/login/", {"username": "ahmadakbar",
                                                                     "password": "password"}).json()["access"]
    ours_access = live_client.post("/users/login/",
                                   json={"username": "ahmadakbar", "password": "password"}).json["access"]
    reference = drf_answer("POST", "/users/refresh/", *as_json({"refresh": reference_access}))
    ours = gateway_answer(live_client, "POST", "/users/refresh/", *as_json({"refresh": ours_access}))
    assert ours == reference == (401, {"detail": "Token has wrong type", "code": "token_not_valid"},
                                 'JWT realm="api"', None)


def test_expired_token_on_verify(live_app, kc):
    from datetime import timedelta

    from rest_framework_simplejwt.tokens import AccessToken

    client = live_app.test_client()
    drf_reference.client()
    from django.contrib.auth.models import User

    expired = AccessToken.for_user(User.objects.get(username="ahmadakbar"))
    expired.set_exp(lifetime=timedelta(seconds=-100))
    reference = drf_answer("POST", "/users/verify/", *as_json({"token": str(expired)}))
    access = client.post("/users/login/", json={"username": "ahmadakbar", "password": "password"}).json["access"]
    tokens = live_app.extensions["gateway"].tokens
    real_clock = tokens.clock
    tokens.clock = lambda: real_clock() + 400
    ours = gateway_answer(client, "POST", "/users/verify/", *as_json({"token": access}))
    assert ours == reference == (401, {"detail": "Token is expired", "code": "token_not_valid"},
                                 'JWT realm="api"', None)


def test_refresh_of_a_user_disabled_since(live_client, kc):
    from django.contrib.auth.models import User
    from rest_framework_simplejwt.tokens import RefreshToken

    drf_reference.client()
    inactive, _ = User.objects.get_or_create(username="disabledsince")
    inactive.is_active = False
    inactive.save()
    reference = drf_answer("POST", "/users/refresh/", *as_json({"refresh": str(RefreshToken.for_user(inactive))}))
    user = kc.create_user()
    refresh = live_client.post("/users/login/", json={"username": user.username, "password": user.password}).json
    kc.admin.update_user(user.id, {"enabled": False})
    ours = gateway_answer(live_client, "POST", "/users/refresh/", *as_json({"refresh": refresh["refresh"]}))
    assert ours == reference == (401, {"detail": "No active account found for the given token."},
                                 'JWT realm="api"', None)
