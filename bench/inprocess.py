"""One kind of request sent N times to an app in this process, the WSGI app called directly (no gunicorn, no
socket from the client side): what `bench.profile` runs under callgrind. The N requests run inside
`functools.reduce`, the function callgrind is told to collect in (`--toggle-collect=functools_reduce`), so the
count is theirs alone: no start-up, no import, no warm-up.

    python -m bench.inprocess --app gateway --kind refresh --requests 100 [--off logs,metrics,limits]

`--off` switches a feature of the gateway off in this process only (a scratch ablation; `gateway/` is not
touched), so that two counts say what the feature costs. Micro kinds measure one piece alone: `limits-hit` (the
`limits` library's moving window hit directly, as the gateway's storage holds it), `http-requests`,
`http-adapter` and `http-urllib3` (one token-endpoint call through a requests Session, through requests'
adapter alone with a prepared request as `gateway/keycloak.py` sends it, or through urllib3's pool).
Prints one JSON line: the statuses answered.
"""

import argparse
import functools
import io
import json
import os
import sys
import tempfile
from urllib.parse import urlencode

from bench.realm import CLIENT_ID, CLIENT_SECRET, PASSWORD

KINDS = ("refresh", "login", "me", "rejected", "limits-hit", "http-requests", "http-adapter", "http-urllib3")
WARMUP = 20


def options(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__.splitlines()[0])
    parser.add_argument("--app", choices=("gateway", "floor", "bare", "none"), default="gateway")
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--off", default="", help="comma-separated: logs, metrics, limits (the gateway only)")
    parser.add_argument("--users", default="", help="comma-separated bench users (login rotates over them)")
    parser.add_argument("--keycloak-url", default="http://localhost:8180/auth/")
    parser.add_argument("--realm", default="edm")
    return parser.parse_args(argv)


def environment(args):
    """The bench's settings for the app, and prometheus_client in multiprocess mode as under gunicorn."""
    from bench import servers

    os.environ.update(servers.environment(args.keycloak_url, CLIENT_SECRET, args.realm))
    os.environ["TMPDIR"] = tempfile.mkdtemp(prefix="bench-state-")  # the gateway's host store, of this run's own
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-metrics-")


class NoMetric:
    """A metric that records nothing: `labels()` gives itself, `inc()` and `observe()` do nothing."""

    def labels(self, *args):
        return self

    def inc(self, *args):
        pass

    def observe(self, *args):
        pass


def build_app(args):
    """The WSGI app, with the features named in `--off` switched off."""
    if args.app == "floor":
        from bench.floor import create_app
        return create_app()
    if args.app == "bare":
        from bench.bare import create_app
        return create_app()
    import logging

    from gateway import create_app, metrics

    app = create_app()
    off = set(filter(None, args.off.split(",")))
    if "logs" in off:
        for name in ("gateway.request", "gateway.audit"):
            logging.getLogger(name).disabled = True
    if "metrics" in off:
        for name in ("ATTEMPTS", "REQUEST_SECONDS", "UPSTREAM_SECONDS", "RATE_LIMITED", "KEY_FETCHES"):
            setattr(metrics, name, NoMetric())
    if "limits" in off:
        limits = app.extensions["limits"]
        limits.per_address, limits.per_username = [], []  # every request then pays only the test of its method
    return app


def grant(args, **form):
    """A grant straight to the token endpoint (outside the count); the answer's JSON."""
    import requests

    url = f"{args.keycloak_url.rstrip('/')}/realms/{args.realm}/protocol/openid-connect/token"
    answer = requests.post(url, data={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **form}, timeout=30)
    answer.raise_for_status()
    return answer.json()


def wsgi_caller(app):
    """call(method, path, body, headers, n) -> (status, body): one request through `app`."""
    def call(method, path, body=b"", headers=(), n=0):
        environ = {"REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
                   "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
                   "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000", "wsgi.version": (1, 0),
                   "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
                   "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
                   "CONTENT_LENGTH": str(len(body)),
                   # 4,096 client addresses, as the bench's load (the gateway trusts one proxy)
                   "HTTP_X_FORWARDED_FOR": f"10.{n // 65536 % 256}.{n // 256 % 16}.{n % 256}"}
        for name, value in headers:
            key = name.upper().replace("-", "_")
            environ[key if key == "CONTENT_TYPE" else f"HTTP_{key}"] = value
        answer = {}

        def start_response(status, response_headers, exc_info=None):
            answer["status"] = int(status.split()[0])

        chunks = app(environ, start_response)
        try:
            data = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
        return answer["status"], data
    return call


def requests_of(args, app):
    """one(n) -> status: the n-th request of `--kind`."""
    json_type = ("Content-Type", "application/json")
    if args.kind in ("limits-hit", "http-requests", "http-adapter", "http-urllib3"):
        return micro(args)
    call = wsgi_caller(app)
    users = args.users.split(",")
    if args.kind == "rejected":
        body = json.dumps({"username": "ab", "password": PASSWORD}).encode()
        return lambda n: call("POST", "/api/login", body, [json_type], n)[0]
    if args.kind == "login":
        bodies = [json.dumps({"username": u, "password": PASSWORD}).encode() for u in users]
        return lambda n: call("POST", "/api/login", bodies[n % len(bodies)], [json_type], n)[0]
    tokens = grant(args, grant_type="password", username=users[0], password=PASSWORD, scope="profile email")
    if args.kind == "me":
        bearer = [("Authorization", f"Bearer {tokens['access_token']}")]
        return lambda n: call("GET", "/api/me", b"", bearer, n)[0]
    chain = {"token": tokens["refresh_token"]}

    def refresh(n):
        status, body = call("POST", "/api/refresh", json.dumps({"refreshToken": chain["token"]}).encode(),
                            [json_type], n)
        if status == 200:
            chain["token"] = json.loads(body)["refreshToken"]
        return status
    return refresh


def micro(args):
    """The micro kinds: one piece of a request alone."""
    if args.kind == "limits-hit":
        from limits import parse
        from limits.strategies import MovingWindowRateLimiter

        from gateway.limits import HostMemoryStorage

        limiter, limit = MovingWindowRateLimiter(HostMemoryStorage()), parse("100/minute")
        return lambda n: (200 if limiter.hit(limit, "edm-gateway", f"10.0.{n // 256 % 16}.{n % 256}", "api.login")
                          else 429)
    url = f"{args.keycloak_url.rstrip('/')}/realms/{args.realm}/protocol/openid-connect/token"
    # A refresh grant Keycloak refuses at once (400 invalid_grant): the client's cost of one token-endpoint call.
    form = {"grant_type": "refresh_token", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "refresh_token": "x" * 900}
    if args.kind == "http-requests":
        import requests
        from requests.adapters import HTTPAdapter

        session = requests.Session()
        session.mount("http://", HTTPAdapter(pool_maxsize=8, max_retries=0))
        return lambda n: session.post(url, data=form, timeout=5).status_code
    if args.kind == "http-adapter":
        import requests
        from requests.adapters import HTTPAdapter
        from requests.structures import CaseInsensitiveDict

        adapter, body = HTTPAdapter(pool_connections=1, pool_maxsize=8, max_retries=0), urlencode(form)

        def send(n):
            request = requests.PreparedRequest()
            request.url, request.hooks, request.method, request.body = url, {"response": []}, "POST", body
            request.headers = CaseInsensitiveDict({"Accept": "application/json", "Content-Length": str(len(body)),
                                                   "Content-Type": "application/x-www-form-urlencoded"})
            answer = adapter.send(request, timeout=5)
            _ = answer.content  # the body read, as the gateway reads it
            return answer.status_code
        return send
    import urllib3

    pool = urllib3.PoolManager(maxsize=8, retries=False, timeout=urllib3.Timeout(connect=5, read=5))
    body = urlencode(form)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return lambda n: pool.request("POST", url, body=body, headers=headers).status


def main(argv=None):
    args = options(argv)
    environment(args)
    app = None if args.app == "none" else build_app(args)
    # The app's log lines go where gunicorn's would under the bench: a file, not this script's output.
    sys.stdout.flush()
    saved = os.dup(1)
    log = tempfile.TemporaryFile()
    os.dup2(log.fileno(), 1)
    try:
        one = requests_of(args, app)
        statuses = {}

        def count(_, n):
            status = one(n)
            statuses[status] = statuses.get(status, 0) + 1

        for n in range(WARMUP):
            one(n)
        functools.reduce(count, range(WARMUP, WARMUP + args.requests), None)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
    print(json.dumps({"statuses": {str(k): v for k, v in statuses.items()}}))


if __name__ == "__main__":
    main()
