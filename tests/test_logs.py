"""Log lines are JSON, one object per line, and no secret gets through, whoever logs it and however."""

import json
import logging

import pytest

from gateway.logs import JsonFormatter, register_secret
from tests.conftest import Signer

JWT = Signer(kid="logs").token(sub="u-1")


def line(message, *args, exc_info=None, **extra):
    record = logging.LogRecord("gateway.test", logging.WARNING, __file__, 1, message, args, exc_info)
    record.__dict__.update(extra)
    text = JsonFormatter().format(record)
    assert "\n" not in text
    return json.loads(text)


def test_a_line_is_one_json_object_with_time_level_logger_and_message():
    parsed = line("hello %s", "world", event="login", status=200)
    assert list(parsed) == ["time", "level", "logger", "message", "pid", "event", "status"]
    assert (parsed["level"], parsed["logger"], parsed["message"], parsed["event"], parsed["status"]) == (
        "warning", "gateway.test", "hello world", "login", 200)
    assert parsed["time"].endswith("+00:00") and "T" in parsed["time"]


@pytest.mark.parametrize("field", ["password", "client_secret", "refreshToken", "access_token", "Authorization",
                                   "cookie", "token", "code_verifier"])
def test_fields_named_like_a_secret_are_replaced_whole(field):
    assert line("x", **{field: "hunter2-value"})[field] == "[redacted]"


@pytest.mark.parametrize("message", [
    f"refresh failed for {JWT}",
    f"Authorization: Bearer {JWT[:40]}",
    "header was Bearer abcdefghijklmnop.qrstuvwxyz",
    "header was JWT abcdefghijklmnopqrstuvwxyz",
    "header was basic dXNlcjpwYXNzd29yZA==",
])
def test_token_shaped_strings_are_replaced_wherever_they_are(message):
    parsed = line(message, detail={"nested": [message]})
    assert "[redacted]" in parsed["message"] and "[redacted]" in parsed["detail"]["nested"][0]
    for secret in (JWT, JWT[:40], "abcdefghijklmnop", "dXNlcjpwYXNzd29yZA"):
        assert secret not in json.dumps(parsed)


def test_registered_secrets_are_replaced_in_messages_fields_and_tracebacks():
    register_secret("Sekr1t-Client-Value")
    try:
        raise RuntimeError("connecting with Sekr1t-Client-Value failed")
    except RuntimeError:
        import sys

        parsed = line("with %s", "Sekr1t-Client-Value", exc_info=sys.exc_info(), note="Sekr1t-Client-Value!")
    assert "Sekr1t-Client-Value" not in json.dumps(parsed)
    assert "Traceback" in parsed["exception"] and "[redacted] failed" in parsed["exception"]


def test_ordinary_words_are_kept():
    parsed = line("wrong password for ahmadakbar", outcome="wrong_password", reason="Invalid user credentials")
    assert (parsed["message"], parsed["outcome"], parsed["reason"]) == (
        "wrong password for ahmadakbar", "wrong_password", "Invalid user credentials")


def test_the_app_logs_through_the_json_handler(app, capsys):
    app.test_client().get("/healthz", headers={"X-Request-ID": "probe-1"})
    lines = [json.loads(text) for text in capsys.readouterr().out.splitlines() if text.startswith("{")]
    request = [entry for entry in lines if entry["logger"] == "gateway.request"]
    assert [(entry["request_id"], entry["path"], entry["status"]) for entry in request] == [
        ("probe-1", "/healthz", 200)]


def test_the_suite_wide_check_finds_what_it_looks_for(logged_lines):
    from tests.conftest import find_leaks

    lines = ['{"message": "login for Pw-0123456789abcdef failed"}', '{"message": "ok"}', f'{{"t": "{JWT}"}}']
    assert find_leaks(lines, {"Pw-0123456789abcdef"}) == [lines[0], lines[2]]
    assert logged_lines is not None  # the run's own lines are being collected for the same check
