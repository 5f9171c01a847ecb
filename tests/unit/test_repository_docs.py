"""The repository carries its own design: no tracked file points at a design document outside
it, and every citation of docs/design.md (a link to a heading, or "docs/design.md §N Title")
names a heading that exists. No network, no services: `git ls-files` and the files."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "design.md"
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()
# Built from pieces so that this file does not match its own patterns (nor a grep for them).
OLD_NAME = "design".upper()  # the outside document's name, matched case-sensitively
OUTSIDE = [
    re.compile(re.escape(".." + "/shared")),
    re.compile(re.escape(f"shared/{OLD_NAME}.md")),
    re.compile(re.escape(f"{OLD_NAME} §")),
    re.compile(rf"\b{OLD_NAME}\b"),
]
ANCHOR_LINK = re.compile(r"design\.md#([A-Za-z0-9_-]+)")
MD_LINK = re.compile(r"\]\(([^)\s#]*design\.md)#[^)\s]*\)")
SECTION_CITE = re.compile(r"design\.md §(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
NUMBERED = re.compile(r"^(\d+(?:\.\d+)*)\.?\s+(.+)$")
COMMENT_LEAD = re.compile(r"^\s*(?:#+|--|//|\*)?\s*")


@cache
def tracked() -> tuple[str, ...]:
    """The tracked files but this one (its patterns and examples are samples)."""
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
    ).stdout
    return tuple(p for p in out.decode().split("\0") if p and p != THIS)


@cache
def text_of(path: str) -> str:
    full = ROOT / path
    if not full.is_file():  # deleted in the working tree, not yet in the index
        return ""
    data = full.read_bytes()
    return "" if b"\0" in data[:8192] else data.decode("utf-8", errors="replace")


def github_slug(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link counts by its text
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def headings(markdown: str) -> list[str]:
    """The headings of a Markdown text, outside fenced code blocks."""
    found, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)):
            found.append(m.group(2))
    return found


def anchors(markdown: str) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for title in headings(markdown):
        slug = github_slug(title)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        result.add(slug if n == 0 else f"{slug}-{n}")
    return result


def sections(markdown: str) -> dict[str, str]:
    """Numbered headings: "6.1" -> "RabbitMQ down or slow"."""
    return {m.group(1): m.group(2) for t in headings(markdown) if (m := NUMBERED.match(t))}


def citations(text: str) -> list[tuple[str, str]]:
    """(section number, the text after it) of each "design.md §N ..." in ``text``."""
    return [(m.group(1), text[m.end() :][1:101]) for m in SECTION_CITE.finditer(text)]


def flowing(text: str) -> str:
    """The text as one line, each line's comment marker and indentation dropped, so that a
    citation wrapped over two lines of a comment or docstring reads as one."""
    return " ".join(COMMENT_LEAD.sub("", line, count=1) for line in text.splitlines())


def test_no_tracked_file_points_outside_the_repository_for_its_design():
    assert len(tracked()) > 100
    offending = {
        path: [p.pattern for p in OUTSIDE if p.search(text)]
        for path in tracked()
        if (text := text_of(path)) and any(p.search(text) for p in OUTSIDE)
    }
    assert offending == {}, "cite docs/design.md instead"


def test_the_design_document_is_tracked_and_numbered():
    assert "docs/design.md" in tracked()
    numbered = sections(DOC.read_text())
    assert {"1", "2", "3", "4", "5", "6", "7", "8", "9"} <= set(numbered), numbered
    assert any("Rollouts" in title for title in numbered.values())


def test_the_readme_points_at_the_openapi_document_and_the_design():
    readme = text_of("README.md")
    assert "`/docs`" in readme and "docs/design.md" in readme


def test_every_link_to_a_heading_of_the_design_resolves():
    known = anchors(DOC.read_text())
    broken = []
    for path in tracked():
        text = text_of(path)
        found = ANCHOR_LINK.findall(text)
        if path == "docs/design.md":
            found += re.findall(r"\]\(#([A-Za-z0-9_-]+)\)", text)
        broken += [f"{path}: #{a}" for a in found if a not in known]
    assert not broken, f"no such heading in docs/design.md: {broken}"


def test_every_relative_link_to_the_design_reaches_it():
    wrong = [
        f"{path}: {target}"
        for path in tracked()
        if path.endswith(".md")
        for target in MD_LINK.findall(text_of(path))
        if not target.startswith(("http:", "https:"))
        and ((ROOT / path).parent / target).resolve() != DOC
    ]
    assert not wrong, wrong


def test_every_section_cited_by_number_exists_with_that_title():
    numbered = sections(DOC.read_text())
    wrong = []
    for path in tracked():
        for number, rest in citations(flowing(text_of(path))):
            title = numbered.get(number)
            if title is None or (rest and rest[:1].isupper() and not rest.startswith(title)):
                wrong.append(f"{path}: §{number} {rest[:40]!r} (heading: {title!r})")
    assert not wrong, wrong


@pytest.mark.parametrize(
    "title,slug",
    [
        ("5. Commands", "5-commands"),
        ("6.1 RabbitMQ down or slow", "61-rabbitmq-down-or-slow"),
        ('6.5 How "nothing lost" is proven', "65-how-nothing-lost-is-proven"),
        ("The `commands.log` queue", "the-commandslog-queue"),
        ("Ingest, third round (2026-11-30)", "ingest-third-round-2026-11-30"),
    ],
)
def test_github_slugs(title: str, slug: str):
    assert github_slug(title) == slug


def test_a_citation_wrapped_over_comment_lines_reads_as_one():
    text = "# stays in RabbitMQ (docs/design.md §6 Failure\n# behaviour), instead of"
    assert citations(flowing(text)) == [("6", "Failure behaviour), instead of")]


def test_every_citation_in_a_text_is_found_with_what_follows_it():
    text = "see design.md §6.1 RabbitMQ down or slow and design.md §6.3 Postgres down"
    assert citations(text) == [
        ("6.1", "RabbitMQ down or slow and design.md §6.3 Postgres down"),
        ("6.3", "Postgres down"),
    ]
