"""The README and the docs site as GitHub shows them: every upstream reference a link to its issue,
every link between pages to a page and a heading that are there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
UPSTREAM = {
    "starlette": "https://github.com/encode/starlette/issues/",
    "anyio": "https://github.com/agronholm/anyio/issues/",
    "fastapi": "https://github.com/fastapi/fastapi/issues/",
}
# `starlette#1634`, `FastAPI#5606`, or a bare `#1715`, which means starlette's.
REFERENCE = re.compile(r"(?:\b(starlette|anyio|fastapi)|(?<![\w&/]))#(\d+)\b", re.IGNORECASE)
COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
FENCED = re.compile(r"^ *```.*?^ *```", re.DOTALL | re.MULTILINE)
CODE = re.compile(r"(`+).+?\1", re.DOTALL)
DEFINITION = re.compile(r"^ {0,3}\[([^\]]+)\]:[ \t]*(\S+).*$", re.MULTILINE)
INLINE_LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]*)[^)]*\)")
REFERENCE_LINK = re.compile(r"\[([^\]]+)\](?:\[([^\]]*)\])?")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def ids(pages: list[Path]) -> list[str]:
    return [str(page.relative_to(ROOT)) for page in pages]


def prose(page: Path) -> str:
    """The page as GitHub renders it into text that can hold a reference: no comments, no code."""
    text = FENCED.sub("", COMMENT.sub("", page.read_text(encoding="utf-8")))
    # A code span may go on over a line break, not over a paragraph's end.
    return "\n\n".join(CODE.sub("", paragraph) for paragraph in text.split("\n\n"))


def expected_url(reference: re.Match[str]) -> str:
    project = (reference.group(1) or "starlette").lower()
    return UPSTREAM[project] + reference.group(2)


def links(text: str) -> list[tuple[str, str]]:
    """(text, address) of each inline and reference link; a reference with no definition is text."""
    definitions = {label.lower(): address for label, address in DEFINITION.findall(text)}
    text = DEFINITION.sub("", text)
    found = INLINE_LINK.findall(text)
    for label, other in REFERENCE_LINK.findall(INLINE_LINK.sub("", text)):
        address = definitions.get((other or label).lower())
        if address is not None:
            found.append((label, address))
    return found


def without_links(text: str) -> str:
    definitions = {label.lower() for label, _ in DEFINITION.findall(text)}
    text = INLINE_LINK.sub("", DEFINITION.sub("", text))

    def drop_if_defined(link: re.Match[str]) -> str:
        label = link.group(2) or link.group(1)
        return "" if label.lower() in definitions else link.group(0)

    return REFERENCE_LINK.sub(drop_if_defined, text)


@pytest.mark.parametrize("page", PAGES, ids=ids(PAGES))
def test_no_upstream_reference_is_plain_text(page: Path) -> None:
    plain = [reference.group(0) for reference in REFERENCE.finditer(without_links(prose(page)))]

    assert plain == [], (
        f"make each a link, e.g. [{plain[0]}]({expected_url(next(REFERENCE.finditer(plain[0])))})"
    )


@pytest.mark.parametrize("page", PAGES, ids=ids(PAGES))
def test_an_upstream_reference_links_to_its_issue(page: Path) -> None:
    wrong = []
    for text, address in links(prose(page)):
        reference = REFERENCE.fullmatch(text)
        if reference is not None and address != expected_url(reference):
            wrong.append((text, address))

    assert wrong == []


def test_the_readme_has_no_in_page_anchors() -> None:
    # PyPI shows the README without the anchors that GitHub makes for its headings.
    anchors = [address for _, address in links(prose(ROOT / "README.md")) if address.startswith("#")]

    assert anchors == []


def github_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings (mkdocs.yml makes the same)."""
    anchors: set[str] = set()
    for heading in HEADING.findall(FENCED.sub("", page.read_text(encoding="utf-8"))):
        text = INLINE_LINK.sub(r"\1", heading).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        anchor, repeat = slug, 0
        while anchor in anchors:
            repeat += 1
            anchor = f"{slug}-{repeat}"
        anchors.add(anchor)
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=ids(PAGES))
def test_a_link_between_pages_reaches_a_page_and_its_heading(page: Path) -> None:
    broken = []
    for _, address in links(prose(page)):
        if re.match(r"[a-z]+:", address):  # https:, mailto:
            continue
        path, _, anchor = address.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists() or (anchor and anchor not in github_anchors(target)):
            broken.append(address)

    assert broken == []


def test_the_readme_is_read_in_a_minute() -> None:
    """Two or three screens; the rest is on the docs site."""
    assert len((ROOT / "README.md").read_bytes()) <= 10 * 1024
