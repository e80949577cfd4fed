"""The bench's quick mode (`python -m bench.run --quick`) against the real Keycloak: a smoke check that it runs
start to finish, reports every phase and every figure of issue #21 with its target, and chains refresh tokens
(run with `--rotation`: in a realm of the bench's own where a refresh token works once). Nothing about speed is
asserted."""

import json
import os
import re
import subprocess
import sys

import pytest
import requests

from tests.conftest import LIVE_URL, ROOT

pytestmark = pytest.mark.keycloak

# Every group of phases the bench runs, and the servers each is sent to, the gateway first.
PHASES = {
    "login c=1": ("gateway", "keycloak"),
    "login c=4": ("gateway", "keycloak"),
    "refresh c=1": ("gateway", "keycloak", "floor"),
    "refresh c=8": ("gateway", "keycloak", "floor"),
    "wrong password c=1": ("gateway", "keycloak"),
    "wrong password c=4": ("gateway", "keycloak"),
    "me c=8": ("gateway", "bare"),
    "rejected payload c=8": ("gateway", "bare"),
    "refresh open loop": ("gateway", "keycloak"),
    "login open loop": ("gateway", "keycloak"),
}
# Issue #21's table: each figure's line in the printed table, and the target it must end with.
FIGURES = [
    ("refresh: gateway CPU/request ÷ the floor's", "≤ 1.1"),
    ("refresh throughput at saturation, gateway ÷ direct", "≥ 0.5"),
    ("refresh answers not 200, every refresh phase (chained tokens)", "0"),
    ("login: gateway CPU ÷ Keycloak CPU", "≤ 0.04"),
    ("/api/me throughput ÷ bare Flask", "≥ 0.85"),
    ("/api/me CPU/request ÷ bare Flask's", "≤ 1.3"),
    ("rejected payload throughput ÷ bare Flask", "≥ 0.8"),
    ("refresh, open loop at ½ the gateway's saturation: rate (req/s)", ""),
    ("login, open loop at ½ the gateway's saturation: rate (req/s)", ""),
]
NUMBER = r"[+-]?[\d.]+"


@pytest.fixture(scope="module")
def quick_run(keycloak_realm, tmp_path_factory):
    """One quick run with rotation on: its printed table and its raw results."""
    results = tmp_path_factory.mktemp("bench")
    # A clean environment: the developer's KEYCLOAK_* / GATEWAY_* settings must not reach the bench's servers.
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(results)), "LANG": "C.UTF-8",
           # the master realm's administrator, as scripts/keycloak.sh started Keycloak with it
           **{name: os.environ[name] for name in ("KC_BOOTSTRAP_ADMIN_USERNAME", "KC_BOOTSTRAP_ADMIN_PASSWORD")
              if os.environ.get(name)}}
    done = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--rotation", "--keycloak-url", LIVE_URL,
                           "--results", str(results)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [results_file] = results.glob("quick-*.json")
    assert list(results.glob("quick-*.png"))
    return done.stdout, json.loads(results_file.read_text())


def test_quick_bench_runs_every_phase_and_reports_it(quick_run):
    _, results = quick_run
    phases = {(p["group"], p["variant"]): p for p in results["phases"]}
    assert sorted(phases) == sorted((group, v) for group, variants in PHASES.items() for v in variants)
    for (group, variant), phase in phases.items():
        assert phase["requests"] > 0, (group, variant)
        if not group.startswith(("wrong password", "rejected payload")):
            assert phase["errors"] == 0, (group, variant, phase["statuses"], phase["bodies"])


def test_quick_bench_prints_every_figure_of_the_issue_with_its_target(quick_run):
    stdout, _ = quick_run
    lines = stdout.splitlines()
    for figure, target in FIGURES:
        pattern = rf"{re.escape(figure)}\s+{NUMBER}\s+{NUMBER}\.\.{NUMBER}\s*{re.escape(target)}$"
        assert any(re.fullmatch(pattern, line) for line in lines), (figure, target)
    for kind in ("refresh", "login"):
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{kind}, open loop at ½"))
        assert re.fullmatch(rf"  latency added by the gateway, p50 \(ms\)\s+{NUMBER}\s+{NUMBER}\.\.{NUMBER}\s*",
                            lines[at + 1])
        assert re.fullmatch(rf"  p99 \(ms\)\s+{NUMBER}\s+{NUMBER}\.\.{NUMBER}\s+≤ \+5", lines[at + 2])
        assert re.fullmatch(rf"  p99\.9 \(ms\)\s+{NUMBER}\s+{NUMBER}\.\.{NUMBER}\s*", lines[at + 3])


def test_refresh_phases_chain_tokens_under_rotation(quick_run):
    _, results = quick_run
    assert results["meta"]["settings"]["refresh_token_rotation"] == {"revokeRefreshToken": True,
                                                                      "refreshTokenMaxReuse": 0}
    refreshes = [p for p in results["phases"] if p["kind"] == "refresh"]
    assert len(refreshes) == 8
    for phase in refreshes:
        # Replayed tokens would be refused here after the first ("Maximum allowed refresh token reuse exceeded").
        assert list(phase["statuses"]) == ["200"], phase["bodies"]
        assert (phase["errors"], phase["socket_errors"], phase["chain_breaks"]) == (0, 0, 0)
    # The open loop's latencies are measured from the schedule, and its rate is half the gateway's saturation.
    for phase in results["phases"]:
        if phase["open_loop"]:
            assert set(phase["latency_ms"]) == {"p50", "p90", "p99", "p99.9", "max"}
            assert phase["rate"] > 0


def test_the_bench_deletes_the_realm_it_made(quick_run):
    _, results = quick_run
    name = results["meta"]["settings"]["realm"]
    assert name.startswith("edm-bench-")
    assert requests.get(f"{LIVE_URL}realms/{name}", timeout=10).status_code == 404
