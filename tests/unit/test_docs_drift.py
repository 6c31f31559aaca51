"""The docs agree with what ships: every figure that cites bench/README.md names a section that
exists there, README lists every doc, examples/config.yaml names every setting, and the flag
tables and docs/cli.md cover every flag and command."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer.main
import yaml

import streamtrain.cli  # noqa: F401  (registers every subcommand)
from streamtrain.cli.command import app
from streamtrain.config import Settings

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
# A citation: a link with an anchor, or the path followed by ", Section" / ", "Section"".
_LINK = re.compile(r"bench/README\.md#([\w-]+)")
_NAMED = re.compile(r"bench/README\.md`?\)?,\s*\"?([A-Z][\w ]*[\w])")
_ANY = re.compile(r"bench/README\.md")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _bench_sections() -> dict[str, str]:
    headings = [line.lstrip("#").strip() for line in BENCH.read_text().splitlines()]
    lines = BENCH.read_text().splitlines()
    headings = [line.lstrip("#").strip() for line in lines if line.startswith("## ")]
    headings += [line.lstrip("#").strip() for line in lines if line.startswith("### ")]
    return {_slug(h): h for h in headings}


def _citations() -> list[tuple[str, int, str]]:
    found = []
    for path in [*DOCS, ROOT / "README.md"]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.startswith("- [bench/README.md](bench/README.md):"):
                continue  # README's list of documents, not a figure
            if _ANY.search(line):
                found.append((path.relative_to(ROOT).as_posix(), number, line))
    return found


def test_every_bench_citation_names_an_existing_section() -> None:
    sections = _bench_sections()
    titles = {title.lower() for title in sections.values()}
    wrong = []
    citations = _citations()
    for where, number, line in citations:
        # A markdown link's text is not a citation; its target is.
        line = line.replace("[bench/README.md](", "(")
        for match in _ANY.finditer(line):
            rest = line[match.start() :]
            link, named = _LINK.match(rest), _NAMED.match(rest)
            if link is not None:
                ok = link.group(1) in sections
            elif named is not None:
                ok = any(t.startswith(named.group(1).lower()) for t in titles)
            else:
                ok = False
            if not ok:
                wrong.append(f"{where}:{number}: {line.strip()}")
    assert len(citations) >= 8, "the citation pattern no longer finds the docs' citations"
    assert not wrong, "cite a bench/README.md section (#anchor or ', Section'):\n" + "\n".join(
        wrong
    )


def test_the_slug_follows_github() -> None:
    assert _slug("Delayed labels: pre-joined vs prediction log + labels + join") == (
        "delayed-labels-pre-joined-vs-prediction-log--labels--join"
    )
    assert _slug("CTR: sparse-ID models vs River FM and Vowpal Wabbit") == (
        "ctr-sparse-id-models-vs-river-fm-and-vowpal-wabbit"
    )


def test_readme_lists_every_doc() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in DOCS if f"(docs/{p.name})" not in readme]
    assert not missing, f"README.md's Documentation list lacks {missing}"


def test_example_config_names_every_setting() -> None:
    text = (ROOT / "examples" / "config.yaml").read_text()
    document = yaml.safe_load(text)
    missing = []
    for section, info in Settings.model_fields.items():
        assert isinstance(info.annotation, type)
        for name in info.annotation.model_fields:
            written = name in (document.get(section) or {})
            # A secret is named in a comment, never written into the file.
            commented = re.search(rf"^\s*#\s*{name}:", text, re.M) is not None
            if not (written or commented):
                missing.append(f"{section}.{name}")
    assert not missing, f"examples/config.yaml (called a complete file) lacks {missing}"


def _flags(command: Any) -> set[str]:
    return {
        flag
        for param in command.params
        if param.param_type_name == "option"
        for flag in param.opts + param.secondary_opts
    }


def test_every_flag_of_the_settings_commands_is_documented() -> None:
    group: Any = typer.main.get_command(app)  # typer's own click: groups have .commands
    doc = (ROOT / "docs" / "configuration.md").read_text()
    flags_section = doc[doc.index("## Command-line flags") :]
    missing = []
    for name in ("train", "serve", "produce", "join"):
        for flag in _flags(group.commands[name]):
            if f"`{flag}`" not in flags_section:
                missing.append(f"{name} {flag}")
    assert not missing, f"docs/configuration.md, Command-line flags, lacks {missing}"


def test_cli_doc_lists_every_command() -> None:
    group: Any = typer.main.get_command(app)  # typer's own click: groups have .commands
    doc = (ROOT / "docs" / "cli.md").read_text()
    missing = []
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            for sub in command.commands:
                if f"streamtrain {name} {sub}" not in doc and f"`streamtrain {name} " not in doc:
                    missing.append(f"{name} {sub}")
        elif f"`streamtrain {name}" not in doc:
            missing.append(name)
    assert not missing, f"docs/cli.md lacks {missing}"


def test_no_file_keeps_merge_conflict_markers() -> None:
    # a merge that committed its markers once (docs/architecture.md): read every text file
    # the repository tracks under these folders
    marker = re.compile(r"^(<{7} |>{7} |={7}$)", re.MULTILINE)
    found = []
    for folder in ("docs", "streamtrain", "tests", "bench", "deploy", "examples", "tools"):
        for path in (ROOT / folder).rglob("*"):
            if ".peers" in path.parts:  # bench peers' virtual environments (make bench-peers)
                continue
            text = path.suffix in {".md", ".py", ".yaml", ".yml", ".json", ".toml", ".txt"}
            if text and marker.search(path.read_text(errors="replace")):
                found.append(str(path.relative_to(ROOT)))
    for name in ("README.md", "Makefile", "pyproject.toml"):
        if marker.search((ROOT / name).read_text()):
            found.append(name)
    assert not found, f"merge conflict markers left in {found}"
