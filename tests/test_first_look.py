"""Issue 17, what a newcomer sees first: `iqa --version`, the order of the
commands in `iqa --help`, and links in the README and docs/ that lead
somewhere."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import iqa_cache
from iqa_cache.cli.app import COMMAND_ORDER, PipelineOrder
from iqa_cache.cli.main import app

from .test_options import HEAVY

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
runner = CliRunner()


# ------------------------------------------------------------- --version

def not_installed(name):
    raise metadata.PackageNotFoundError(name)


@pytest.fixture
def fresh_version(monkeypatch):
    """iqa_cache.__version__ looked up again (it is cached on first use)."""
    monkeypatch.delitem(iqa_cache.__dict__, "__version__", raising=False)
    return monkeypatch


def test_version_is_the_installed_distributions():
    try:
        installed = metadata.version("iqa-cache")
    except metadata.PackageNotFoundError:
        pytest.skip("iqa-cache is not installed here (the fallback is tested below)")
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0, r.output
    assert r.stdout == f"iqa-cache {installed}\n"


def test_version_falls_back_to_pyproject_when_not_installed(fresh_version):
    fresh_version.setattr(metadata, "version", not_installed)
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0, r.output
    assert r.stdout == f"iqa-cache {PYPROJECT_VERSION}\n"
    assert iqa_cache.__version__ == PYPROJECT_VERSION


@pytest.mark.parametrize("pyproject", [None, '[project]\nname = "other"\nversion = "9.9"\n', "not toml ["])
def test_version_outside_a_checkout_is_unknown(fresh_version, tmp_path, pyproject):
    fresh_version.setattr(metadata, "version", not_installed)
    (tmp_path / "iqa_cache").mkdir()
    fresh_version.setattr(iqa_cache, "__file__", str(tmp_path / "iqa_cache" / "__init__.py"))
    if pyproject is not None:
        (tmp_path / "pyproject.toml").write_text(pyproject)
    assert iqa_cache.__version__ == iqa_cache.UNKNOWN_VERSION


def test_version_comes_first_and_ends_the_command():
    # eager: printed even with a command after it, which then does not run
    r = runner.invoke(app, ["--version", "train-head", "--cache", "/nonexistent.h5"])
    assert r.exit_code == 0 and r.stdout.startswith("iqa-cache ") and r.stdout.count("\n") == 1
    assert "--version" in runner.invoke(app, ["--help"]).stdout


def test_version_in_a_fresh_process_loads_no_heavy_library():
    code = ("import json, sys\nsys.argv = ['iqa', '--version']\nfrom iqa_cache.cli.main import main\n"
            "try:\n    main()\nfinally:\n"
            "    print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("iqa-cache ") and r.stdout.split() == ["iqa-cache", iqa_cache.__version__]
    loaded = set(json.loads(r.stderr.strip().splitlines()[-1]))
    assert not loaded & {*HEAVY, "timm"}


def test_importing_the_package_does_not_look_the_version_up():
    code = "import sys, iqa_cache.cli.main, iqa_cache.train.runs; print('importlib.metadata' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


# ------------------------------------------------------------- --help order

def help_commands(output: str) -> list[str]:
    lines = output.splitlines()
    start = lines.index("Commands:") + 1
    return [line.split()[0] for line in lines[start:] if line.startswith("  ") and line.split()]


def test_help_lists_the_commands_in_pipeline_order():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0, r.output
    assert help_commands(r.stdout) == ["embed", "import", "train-head", "ablate", "evaluate", "report", "predict",
                                       "demo"]
    assert tuple(help_commands(r.stdout)) == COMMAND_ORDER


def test_every_command_has_its_place_in_the_order():
    registered = typer.main.get_command(app).commands
    assert sorted(registered) == sorted(COMMAND_ORDER)


def test_the_order_does_not_depend_on_registration():
    demo = typer.Typer(cls=PipelineOrder, add_completion=False, rich_markup_mode=None)
    for name in ("zz-unknown", "demo", "train-head", "embed", "report", "ablate", "evaluate", "predict", "import",
                 "aa-unknown"):
        demo.command(name)(lambda: None)
    group = typer.main.get_command(demo)
    with group.make_context("iqa", []) as ctx:
        names = group.list_commands(ctx)
    # commands not in the list come last, in the order they were registered
    assert names == [*COMMAND_ORDER, "zz-unknown", "aa-unknown"]


# ------------------------------------------------------------- README and docs/

DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``path``: lower case,
    punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", FENCE.sub("", path.read_text()), re.M):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(files: list[Path], root: Path = ROOT) -> list[str]:
    """Each relative link of ``files`` whose file or anchor does not exist."""
    bad = []
    for path in files:
        name = path.relative_to(root).as_posix()
        for target in LINK.findall(_prose(path.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                bad.append(f"{name}: {target} (no such file)")
            elif anchor and (dest.is_dir() or dest.suffix != ".md" or anchor not in anchors(dest)):
                bad.append(f"{name}: {target} (no such anchor)")
    return bad


def test_every_relative_link_in_the_readme_and_docs_resolves():
    assert len(DOC_FILES) > 5
    assert broken_links(DOC_FILES) == []


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Some `code` (here)\n\n## Title\n\n"
                                   "[ok](b.md#the-b-page) [ok](#some-code-here) [ok](#title-1) [ok](./)\n"
                                   "[ok](https://example.org/x.md) `[not a link](nowhere.md)`\n"
                                   "```\n[not a link either](gone.md)\n```\n"
                                   "[bad](missing.md) [bad](b.md#nope) [bad](#title-2)\n")
    (tmp_path / "b.md").write_text("# The B page\n")
    assert broken_links([tmp_path / "a.md"], tmp_path) == [
        "a.md: missing.md (no such file)", "a.md: b.md#nope (no such anchor)", "a.md: #title-2 (no such anchor)"]


def test_the_readme_test_command_is_what_ci_runs():
    """The README's second set-up command is .ci/run's, less pip's -q."""
    block = re.search(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M).group(1)
    demo, tests = block.splitlines()[:2]
    assert demo.endswith("&& .venv/bin/iqa demo") and tests.endswith("&& .venv/bin/python -m pytest")
    ci = next(line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "-m pytest" in line)
    assert ci.replace(" -q ", " ") == tests


def test_development_md_lists_every_bench():
    text = (Path(__file__).resolve().parents[1] / "docs" / "development.md").read_text(encoding="utf-8")
    bench = Path(__file__).resolve().parents[1] / "bench"
    missing = [p.name for p in sorted(bench.iterdir()) if p.suffix in (".py", ".sh") and p.name != "__init__.py"
               and f"`{p.name}`" not in text]
    assert not missing, f"docs/development.md does not name {', '.join(missing)}"
