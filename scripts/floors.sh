#!/usr/bin/env bash
# The offline suite (-m "not keycloak", but the Chromium tests) on the dependency floors: every dependency of
# pyproject.toml at the lowest release it allows (a constraints file of exactly those, from scripts/floors.py), beside
# the pinned test tools, in a virtualenv of its own (.venv-floors) that is made again only when pyproject.toml or the
# test pins change. Says how long it took.
#   scripts/floors.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-floors
BROWSER_AND_PLOT="playwright|greenlet|matplotlib|contourpy|cycler|fonttools|kiwisolver|numpy|pillow|pyparsing"

began=$SECONDS
constraints=$("$PYTHON" scripts/floors.py)
stamp="$VENV/.installed-$(cat pyproject.toml requirements-test.txt | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  printf '%s\n' "$constraints" > "$VENV/constraints.txt"
  # the test tools but the browser's and the bench plot's, which test no dependency of the gateway
  grep -vE "^($BROWSER_AND_PLOT)==" requirements-test.txt > "$VENV/test-tools.txt"
  # editable: the console script and the tests run the checkout's code, on the floors' dependencies
  "$VENV/bin/pip" install -q --disable-pip-version-check -c "$VENV/constraints.txt" -r "$VENV/test-tools.txt" -e .
  touch "$stamp"
fi
installed=$((SECONDS - began))

# The fuzzing is the main suite's work; here a few examples per endpoint show that the parsers behave the same.
status=0
FUZZ_EXAMPLES=${FUZZ_EXAMPLES:-30} "$VENV/bin/python" -m pytest -m "not keycloak" -q -p no:cacheprovider \
  --ignore tests/test_browser_chromium.py --ignore tests/test_bff_chromium.py \
  --ignore tests/test_topology.py "$@" || status=$?  # the topology's faults are the stack's, not a dependency's
echo "the floors ($(printf '%s' "$constraints" | tr '\n' ' ')) took $((SECONDS - began)) s, $installed s of it" \
     "to install" >&2
exit $status
