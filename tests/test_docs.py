"""The promises the docs make: CI runs what README says, .env.example lists every key, and every
link between README, AGENTS.md and docs/ leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

from support_worker.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_ci_installs_and_tests_exactly_as_the_readme_says() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    quick_start = re.search(r"## Quick start.*?```sh\n(.*?)```", readme, re.S)
    assert quick_start is not None
    install, test = quick_start.group(1).strip().splitlines()
    assert install in ci.splitlines() and test in ci.splitlines()
    checks = re.search(r"## Development.*?```sh\n(.*?)\n", readme, re.S)
    assert checks is not None
    for command in checks.group(1).split(" && "):
        assert command in ci, command
    chaos = re.search(r"^(\.venv/bin/pytest -n auto -m chaos)", readme, re.M)
    assert chaos is not None and chaos.group(1) in ci.splitlines(), "CI runs the chaos suite README names"


def test_env_example_documents_every_setting() -> None:
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", example, re.M))
    assert documented == {name.upper() for name in Settings.model_fields}


def test_every_top_level_module_is_packaged() -> None:
    """A module missing from pyproject's py-modules is absent from a non-editable install."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["py-modules"])
    assert {p.stem for p in ROOT.glob("*.py")} == listed


DOC_PAGES = ("durable", "doors", "controls", "configuration", "performance", "course", "development")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", markdown, flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_stays_a_first_page_and_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for page in DOC_PAGES:
        assert f"](docs/{page}.md" in readme, page
    assert {p.stem for p in (ROOT / "docs").glob("*.md")} == set(DOC_PAGES)


def test_every_relative_link_in_the_docs_leads_to_a_file_and_heading_that_exist() -> None:
    pages = [ROOT / "README.md", ROOT / "AGENTS.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text()):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []
