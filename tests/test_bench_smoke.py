"""The bench's quick mode (`python -m bench.run --quick`) against the real Keycloak: a smoke check that it runs
start to finish and reports every phase. Nothing about speed is asserted."""

import json
import os
import subprocess
import sys

import pytest

from bench.phases import plan
from tests.conftest import LIVE_URL, ROOT

pytestmark = pytest.mark.keycloak


def test_quick_bench_runs_every_phase_and_reports_it(keycloak_realm, tmp_path):
    # A clean environment: the developer's KEYCLOAK_* / GATEWAY_* settings must not reach the bench's servers.
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path)), "LANG": "C.UTF-8"}
    done = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--keycloak-url", LIVE_URL,
                           "--results", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ratio (per round, then median)" in done.stdout
    assert "refresh: gateway CPU/request ÷ the floor's" in done.stdout

    [results_file] = tmp_path.glob("quick-*.json")
    results = json.loads(results_file.read_text())
    assert list(tmp_path.glob("quick-*.png"))
    phases = {(p["group"], p["variant"]): p for p in results["phases"]}
    for group in plan():
        for variant in group.variants:
            phase = phases[(group.name, variant)]
            assert phase["requests"] > 0, (group.name, variant)
            if group.expect[variant] == 200:
                assert phase["errors"] == 0, (group.name, variant, phase["statuses"], phase["bodies"])
