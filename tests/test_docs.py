"""The README and docs/ hold together: every document is linked from the README, every relative link and anchor
leads somewhere, the README stays a short first screen, and no internal project words leak into them."""

import re

import pytest

from tests.conftest import ROOT

DOCUMENTS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# Words of the team's own process that mean nothing to a reader: issue numbers, work waves, the original seeds.
INTERNAL = re.compile(r"\bissues? #\d+|#\d+'s\b|\bwaves?\b|\bseeds?\b|\bseed's\b", re.IGNORECASE)


def slug(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    """The anchors of a Markdown file's headings (outside code blocks), duplicates numbered as GitHub does."""
    seen, found, fenced = {}, set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6} (.+)", line)):
            anchor = slug(match[1])
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def test_the_readme_links_every_document_in_docs():
    readme = (ROOT / "README.md").read_text()
    linked = {target.split("#")[0] for target in LINK.findall(readme)}
    documents = {f"docs/{path.name}" for path in (ROOT / "docs").iterdir() if path.suffix in (".md", ".html", ".json")}
    assert sorted(documents - linked) == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(document):
    broken = []
    for target in LINK.findall(document.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        destination = (document.parent / path).resolve() if path else document
        if not destination.exists():
            broken.append(target)
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(target)
    assert broken == []


def test_the_readme_is_a_short_first_screen():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_no_internal_words(document):
    lines = document.read_text().splitlines()
    assert [f"{number}: {line}" for number, line in enumerate(lines, 1) if INTERNAL.search(line)] == []
