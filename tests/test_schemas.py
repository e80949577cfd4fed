"""The login payload rules: every bad body answers the one documented string and reaches no upstream."""

import pytest
import responses

PAYLOAD_UNKNOWN = "code=400, message=payload is unknown"


@pytest.fixture
def no_upstream():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock
        assert len(mock.calls) == 0


@pytest.mark.parametrize("body", [
    {},
    {"username": "ahmadakbar"},
    {"password": "password"},
    {"username": None, "password": "password"},
    {"username": "ahmadakbar", "password": None},
    {"username": 12345678, "password": "password"},
    {"username": "ahmadakbar", "password": 12345678},
    {"username": ["ahmadakbar"], "password": "password"},
    {"username": {"a": 1}, "password": "password"},
    {"username": True, "password": "password"},
    {"username": "ab", "password": "password"},
    {"username": "a" * 256, "password": "password"},
    {"username": "", "password": "password"},
    {"username": "ahmad akbar", "password": "password"},
    {"username": "ahmad_akbar", "password": "password"},
    {"username": "ahmad.akbar", "password": "password"},
    {"username": "ahmad-akbar", "password": "password"},
    {"username": "ahmadakbar\n", "password": "password"},
    {"username": " ahmadakbar", "password": "password"},
    {"username": "ahmädakbar", "password": "password"},
    {"username": "ahmadakbar١", "password": "password"},
    {"username": "ahmadakbar", "password": "passwor"},
    {"username": "ahmadakbar", "password": ""},
    {"username": "ahmadakbar", "password": "p" * 1025},
    ["ahmadakbar", "password"],
    "ahmadakbar",
    42,
    None,
], ids=repr)
def test_invalid_json_payload(client, no_upstream, body):
    response = client.post("/api/login", json=body)
    assert (response.status_code, response.json) == (400, PAYLOAD_UNKNOWN)


@pytest.mark.parametrize("data, content_type", [
    ("", "application/json"),
    ("{", "application/json"),
    ('{"username": "ahmadakbar", "password": "password"', "application/json"),
    ("\xff\xfe", "application/json"),
    ("[" * 5000 + "]" * 5000, "application/json"),
    ('{"username": "ahmadakbar", "password": "password"}', "text/plain"),
    ('{"username": "ahmadakbar", "password": "password"}', None),
    ("username=ahmadakbar&password=password", "text/plain"),
    ("username=ahmadakbar", "application/x-www-form-urlencoded"),
    ("username=ahmadakbar&username=other&password=password", "application/x-www-form-urlencoded"),
    ("username=ab&password=password", "application/x-www-form-urlencoded"),
    ("--x\r\nbroken multipart", "multipart/form-data; boundary=x"),
    ("--x\r\nbroken multipart", "multipart/form-data"),
    ('{"username": "ahmadakbar", "password": "\\ud800password"}', "application/json"),
])
def test_invalid_raw_payload(client, no_upstream, data, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/api/login", data=data.encode("utf-8", "surrogateescape"), headers=headers)
    assert (response.status_code, response.json) == (400, PAYLOAD_UNKNOWN)


def test_password_is_not_trimmed_and_extra_fields_are_ignored(app, monkeypatch):
    seen = []
    monkeypatch.setattr(app.extensions["gateway"], "login", lambda u, p: seen.append((u, p)) or 1 / 0)
    client = app.test_client()
    client.post("/api/login", json={"username": "abc", "password": "  spaced  ", "remember": True})
    client.post("/api/login", json={"username": "a" * 255, "password": "p" * 1024})
    client.post("/api/login", data={"username": "Abc123", "password": "pässwörd ✓"})
    assert seen == [("abc", "  spaced  "), ("a" * 255, "p" * 1024), ("Abc123", "pässwörd ✓")]


@pytest.mark.parametrize("charset", ["rot13", "base64", "zlib", "bz2", "hex", "uu", "undefined", "utf-16", "bogus"])
@pytest.mark.parametrize("path", ["/api/login", "/api/refresh", "/api/logout"])
def test_a_charset_that_is_no_text_encoding_changes_nothing(client, no_upstream, path, charset):
    # JSON has no charset parameter (RFC 8259 11): the EDM endpoints read UTF-8 JSON whatever it says.
    for content_type, data in ((f"application/json; charset={charset}", b'{"username": "ab"}'),
                               (f"application/x-www-form-urlencoded; charset={charset}", b"username=ab"),
                               (f"multipart/form-data; boundary=x; charset={charset}", b"--x--\r\n")):
        response = client.post(path, data=data, headers={"Content-Type": content_type})
        assert (response.status_code, response.json) == (400, PAYLOAD_UNKNOWN)


def test_a_charset_that_is_no_text_encoding_is_drfs_400_on_the_simplejwt_profile(client, no_upstream):
    response = client.post("/users/login/", data=b'{"username": "a"}',
                           headers={"Content-Type": "application/json; charset=zlib"})
    assert (response.status_code, response.json) == (
        400, {"detail": 'Unsupported charset "zlib" in request Content-Type header.'})
