"""The repository explains itself: every citation of the docs names a section that exists, and nothing cites a
design or specification file kept outside the repository."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("design.md", "semantics.md")
CITATION = re.compile(r"docs/(design|semantics)\.md((?:\s*§[0-9.]+(?:\s*-\s*§[0-9.]+)?)*)")
SECTION = re.compile(r"§([0-9]+(?:\.[0-9]+)?)")
HEADING = re.compile(r"^#{2,3} ([0-9]+(?:\.[0-9]+)?)[. ]", flags=re.M)


def _repository_text_files() -> list[Path]:
    """The repository's own text files: no hidden folders (.git, .venv), virtualenvs, caches or build outputs
    (found by walking the folder, so the test also runs from an unpacked source archive)."""
    suffixes = {".py", ".md", ".yaml", ".cfg", ".toml", ".txt", ".sh", ""}
    skipped = {"__pycache__", "build", "dist", "node_modules"}
    files = []
    for folder, subfolders, names in os.walk(ROOT):
        subfolders[:] = [
            name
            for name in subfolders
            if not name.startswith(".")
            and name not in skipped
            and not name.endswith(".egg-info")
            and not (Path(folder, name) / "pyvenv.cfg").exists()
        ]
        files += [Path(folder, name) for name in names if Path(name).suffix in suffixes]
    return files


def _sections(doc: str) -> set[str]:
    return set(HEADING.findall((ROOT / "docs" / doc).read_text()))


def test_every_citation_names_an_existing_section():
    sections = {doc: _sections(doc) for doc in DOCS}
    assert {"1", "2"} <= sections["design.md"] and {"1.1", "5.4"} <= sections["semantics.md"], sections
    cited = 0
    for path in _repository_text_files():
        for match in CITATION.finditer(path.read_text(errors="replace")):
            doc = f"{match.group(1)}.md"
            for number in SECTION.findall(match.group(2)):
                cited += 1
                assert number.rstrip(".") in sections[doc], f"{path.relative_to(ROOT)} cites {doc} §{number}"
    assert cited >= 20, "the code should cite the docs' sections; the pattern found almost none"


def test_nothing_cites_files_outside_the_repository():
    outside = re.compile(r"\b(?:DESIGN|SPEC)(?:\.md|\s+[0-9])|\.\./shared/")
    hits = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _repository_text_files()
        if path.name != "test_docs.py"
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if outside.search(line)
    ]
    assert not hits, hits


def test_readme_links_the_docs():
    readme = (ROOT / "README.md").read_text()
    for doc in DOCS:
        assert f"(docs/{doc})" in readme and (ROOT / "docs" / doc).is_file()
