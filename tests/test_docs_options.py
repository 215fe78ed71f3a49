"""Every option that a code block of the README or docs/ passes to an `iqa`
command exists in that command's --help (a renamed or removed option fails
here, not in a newcomer's shell)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from iqa_cache.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
STOP = {"|", "||", "&&", ";", ">", ">>", "2>&1", "<"}


def code_blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text(encoding="utf-8"))


def commands(block: str) -> list[tuple[str, list[str]]]:
    """(subcommand, its words) for every `iqa SUB ...` or `-m iqa_cache.cli SUB ...` in a shell block."""
    text = re.sub(r"\\\n", " ", block)
    found = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0]
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # not shell (a table, a Python snippet with quotes)
            continue
        for i, w in enumerate(words):
            if (w.endswith("/iqa") or w == "iqa" or w == "iqa_cache.cli") and i + 1 < len(words):
                if w == "iqa_cache.cli" and (i == 0 or words[i - 1] != "-m"):
                    continue
                rest = []
                for x in words[i + 1:]:
                    if x in STOP:
                        break
                    rest.append(x)
                found.append((rest[0], rest[1:]) if rest else ("", []))
    return found


def cli_options() -> dict[str, set[str]]:
    group = typer.main.get_command(app)
    out = {}
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        out[name] = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    out[""] = {o for p in group.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    return out


def documented() -> list[tuple[str, str, str]]:
    """(doc, subcommand, option) for every long option a doc's code block passes to `iqa`."""
    rows = []
    for doc in DOCS:
        for block in code_blocks(doc):
            for sub, words in commands(block):
                for w in words:
                    if w.startswith("--") and len(w) > 2:
                        rows.append((doc.relative_to(ROOT).as_posix(), sub, w.split("=", 1)[0]))
    return rows


def test_the_extractor_reads_continued_lines_and_pipes():
    block = "iqa train-head --cache $C \\\n    --lds --out runs/x | tee log  # note --not-this\n" \
            "torchrun --nproc-per-node 2 -m iqa_cache.cli ablate --grid 'a=1' --out d\n"
    assert commands(block) == [("train-head", ["--cache", "$C", "--lds", "--out", "runs/x"]),
                               ("ablate", ["--grid", "a=1", "--out", "d"])]


def test_docs_name_many_options():
    rows = documented()
    assert len(rows) > 50 and {d for d, _, _ in rows} >= {"README.md", "docs/training.md", "docs/reproduce.md"}


@pytest.mark.parametrize("doc", [d.relative_to(ROOT).as_posix() for d in DOCS])
def test_every_option_in_the_docs_exists(doc):
    known = cli_options()
    bad = []
    for d, sub, opt in documented():
        if d != doc:
            continue
        if sub.startswith("-"):  # global options before the command: `iqa -v report ...`
            continue
        if sub not in known:
            bad.append(f"`iqa {sub}`: no such command")
        elif opt not in known[sub]:
            bad.append(f"`iqa {sub} {opt}`: no such option")
    assert not bad, f"{doc}: " + "; ".join(sorted(set(bad)))
