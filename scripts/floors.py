"""The dependency floors of pyproject.toml as a pip constraints file: each dependency pinned at the lowest release
its requirement allows (`flask>=3.1.3` gives `flask==3.1.3`); extras and markers dropped, as constraints take none.

    python3 scripts/floors.py > constraints.txt
"""

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
REQUIREMENT = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(?P<bounds>[^;]*)")


def floors(pyproject=PYPROJECT):
    """{distribution name: its floor} of every runtime dependency; a dependency without a `>=` floor is an error."""
    found = {}
    for requirement in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        parts = REQUIREMENT.fullmatch(requirement.strip())
        floor = re.search(r">=\s*([^,\s]+)", parts["bounds"]) if parts else None
        if floor is None:
            raise SystemExit(f"floors: {requirement!r} in pyproject.toml has no >= floor")
        found[re.sub(r"[-_.]+", "-", parts["name"]).lower()] = floor.group(1)  # the name as PEP 503 writes it
    return found


if __name__ == "__main__":
    sys.stdout.write("".join(f"{name}=={version}\n" for name, version in floors().items()))
