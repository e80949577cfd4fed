"""Logging: one JSON object per line on standard output, configured once for the app and for gunicorn alike.

The standard library's logging with the small formatter below, rather than python-json-logger or structlog: it
is the best-kept option there is (it ships with Python), the formatter is a few dozen lines, and the one thing
that matters most here, that no secret is ever written, is enforced in this one place, `JsonFormatter.clean`:
- fields named like a secret (`password`, `token`, `authorization`, `cookie`, `secret`...) are replaced whole;
- token-shaped strings (JWTs, `Bearer ...` credentials) and the secrets registered at start (the client
  secret) are replaced wherever they appear, in messages, fields and tracebacks alike.
"""

import functools
import json
import logging
import re
import sys
import threading
import time

from flask import g, has_request_context

REDACTED = "[redacted]"
SECRET_FIELDS = re.compile(r"pass(word)?|secret|token|authorization|cookie|credential|session_id|code_verifier",
                           re.IGNORECASE)
TOKEN_SHAPES = re.compile(
    r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.?[A-Za-z0-9_-]*"  # a JWT (Keycloak's refresh tokens are JWTs too)
    r"|\b(?:Bearer|JWT|Basic)\s+[A-Za-z0-9._~+/=-]{8,}",  # credentials of an Authorization header
    re.IGNORECASE,
)
# The attributes every LogRecord has; anything else on a record came in through `extra=` and is a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

_secrets = set()
_secrets_lock = threading.Lock()
_encode = json.JSONEncoder(default=str).encode
_PLAIN = frozenset({int, float, bool, type(None)})  # values with no text in them to clean


@functools.lru_cache(maxsize=1024)
def _is_secret_field(name):
    return bool(SECRET_FIELDS.search(name))


_second = (None, "")  # the last whole second formatted and its text (lines come many to a second); one tuple,
# replaced whole, so that a thread never reads one second with another's text


def _utc_time(created):
    """ISO 8601 in UTC with milliseconds, e.g. 2026-11-25T20:58:34.778+00:00."""
    global _second
    whole = int(created)
    second, text = _second
    if second != whole:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, text)
    return f"{text}.{int((created - whole) * 1000):03d}+00:00"


def register_secret(value):
    """A value that must never be written, wherever it turns up (the client secret, the session secret)."""
    if value and len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON: time, level, logger, message, then its fields (the request id and trace id
    during a request, and those given with `extra=`); every string cleaned of secrets."""

    def format(self, record):
        clean = self.clean
        line = {  # the first four are the gateway's own words: nothing in them to clean
            "time": _utc_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": clean(record.getMessage()),
            "pid": record.process,
        }
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES and name[0] != "_":
                if _is_secret_field(name):
                    line[name] = REDACTED
                else:
                    line[name] = value if type(value) in _PLAIN else clean(value)
        if record.exc_info:
            line["exception"] = clean(self.formatException(record.exc_info))
        return _encode(line)

    @staticmethod
    def clean(value):
        """The value with every token-shaped string and registered secret replaced."""
        if isinstance(value, str):
            value = TOKEN_SHAPES.sub(REDACTED, value)
            for secret in _secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: REDACTED if SECRET_FIELDS.search(str(k)) else JsonFormatter.clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [JsonFormatter.clean(v) for v in value]
        return value


class StdoutHandler(logging.StreamHandler):
    """Standard output as it is when a line is written, not as it was when logging was configured."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def logging_config():
    """The logging configuration, as `logging.config.dictConfig` takes it (gunicorn's `logconfig_dict` too)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stdout": {"()": StdoutHandler, "formatter": "json"}},
        "root": {"level": "INFO", "handlers": ["stdout"]},
        "loggers": {
            # gunicorn's own loggers, made to go through the root's JSON handler
            "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
        },
    }


def _stamped_with_request_id(make_record):
    """A record factory that stamps each record made during a request with its id and trace id, whatever handler
    writes it."""

    def make(*args, **kwargs):
        record = make_record(*args, **kwargs)
        if has_request_context():
            context = g._get_current_object()
            if "request_id" in context:
                record.request_id, record.trace_id = context.request_id, getattr(context, "trace_id", None)
        return record

    make.edm_gateway = True
    return make


def info(logger, message, fields):
    """`logger.info(message, extra=fields)`, less the look-up of the caller's file and line, which no line prints
    (a stack walk on every request's two lines)."""
    if logger.isEnabledFor(logging.INFO):
        logger.handle(logger.makeRecord(logger.name, logging.INFO, "", 0, message, (), None, extra=fields))


def configure_logging():
    """Install the JSON handler on the root logger and the request id on every record, once per process (gunicorn's
    master may have done the first)."""
    import logging.config

    if not any(isinstance(h, StdoutHandler) for h in logging.getLogger().handlers):
        logging.config.dictConfig(logging_config())
    if not getattr(logging.getLogRecordFactory(), "edm_gateway", False):
        logging.setLogRecordFactory(_stamped_with_request_id(logging.getLogRecordFactory()))
