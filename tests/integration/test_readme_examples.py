"""Every example of the documentation runs as written on the default model (issue 13, "What must hold" 1;
issue 33: the README's examples moved to the pages of docs/, and still run there).

Every fenced ```yaml and ```python block of README.md and of every page under docs/ (``docs/**/*.md``) is
extracted and run:

* a YAML block that is a whole spec file (a top-level ``behaviors`` key) runs through pytest and must pass;
* a YAML fragment (one behavior, ``- name: ...``) is wrapped into a spec file with ``model: interptest-tiny``
  and must pass;
* the Python blocks of a page run in order in one namespace, as a reader would run them in a notebook (the
  tutorial's later blocks use the names of its earlier ones); each page starts a namespace of its own. Where a
  line reads ``expression  # <a Python literal>`` the expression must equal the literal, and a
  ``print(...)  # output`` line must print its comment. A block that defines a ``test_...`` function is also
  written into a test file and run by pytest, and must pass.

Each block is named ``PAGE:LINE-LANGUAGE`` (the page relative to the repository root, the line of its opening
fence): the test ids, the failure messages and the tracebacks of Python blocks (compiled with their page's
line numbers) say where the example is.

A block that is not meant to run (a GitHub workflow, a file layout) is excluded only by a visible marker on
the line before it in its page: ``<!-- not run: the reason -->``. Nothing is skipped silently.
"""

import ast
import contextlib
import io
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch  # noqa: F401  (pytester's in-process runs must find torch already imported)

import interptest.api  # noqa: F401
import interptest.model_cache  # noqa: F401
from interptest.tl_compat import bridge_class

bridge_class()  # imports transformer_lens's bridge (and attaches boot_transformers) before the in-process runs

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]  # the README first, then every page of the site
RUN = ("yaml", "python")
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>\S[^>]*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: str  # the page's path relative to the repository root, e.g. docs/tutorial/induction.md
    line: int  # the line of the opening fence
    language: str
    text: str
    not_run: str | None  # the reason given by a "<!-- not run: ... -->" marker, or None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}-{self.language}"

    def code(self):
        """The block compiled with its page's line numbers, so that a traceback names the page's line."""
        return compile("\n" * self.line + self.text, self.page, "exec")


def blocks(text: str, page: str) -> list[Block]:
    found = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.search(previous)
        found.append(
            Block(
                page,
                i + 1,
                fence.group(1),
                "\n".join(lines[i + 1 : end]) + "\n",
                marker.group("reason") if marker else None,
            )
        )
        i = end + 1
    return found


def _page_blocks(path: Path) -> list[Block]:
    return [b for b in blocks(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix()) if b.language in RUN]


ALL = [b for page in PAGES for b in _page_blocks(page)]
RUNNABLE = [b for b in ALL if b.not_run is None]
YAML = [b for b in RUNNABLE if b.language == "yaml"]
PYTHON = [b for b in RUNNABLE if b.language == "python"]
PYTHON_PAGES = sorted({b.page for b in PYTHON}, key=[p.relative_to(ROOT).as_posix() for p in PAGES].index)


def test_every_yaml_and_python_block_is_run_or_visibly_excluded():
    assert YAML and PYTHON
    excluded = {b.id: b.not_run for b in ALL if b.not_run is not None}
    # Each exclusion names its reason in its page; today only the CI workflow (docs/ci.md) is not run.
    assert all(len(reason) > 10 for reason in excluded.values()), excluded
    assert [b.text.splitlines()[0] for b in ALL if b.not_run is not None] == ["# .github/workflows/interp.yml"]
    for block in YAML:  # and every YAML block is one of the two kinds run below
        assert _spec_text(block)


def test_the_readme_keeps_one_example_and_the_pages_hold_the_rest():
    """The README is a front page: its one example runs; the tutorial, the claim pages, families and the
    Python API run theirs from docs/ (each page that had examples in the README still has them)."""
    pages = {b.page for b in RUNNABLE}
    assert [b.language for b in RUNNABLE if b.page == "README.md"] == ["yaml"]
    expected = {
        "docs/tutorial/induction.md",
        "docs/spec.md",
        "docs/claims/features.md",
        "docs/families.md",
        "docs/api/index.md",
    }
    assert expected <= pages, expected - pages


def _spec_text(block: Block) -> str:
    """The block as a spec file: as written, or a behavior fragment wrapped with the default model."""
    if re.search(r"^behaviors\s*:", block.text, re.MULTILINE):
        return block.text
    first = next(line for line in block.text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    assert first.lstrip().startswith("- name:"), f"{block.id}: neither a spec file nor a behavior fragment"
    return "model: interptest-tiny\nbehaviors:\n" + textwrap.indent(textwrap.dedent(block.text), "  ")


@pytest.mark.parametrize("block", YAML, ids=[b.id for b in YAML])
def test_yaml_block_passes(block, pytester):
    spec = pytester.path / "behaviors" / "readme.yaml"
    spec.parent.mkdir()
    spec.write_text(_spec_text(block), encoding="utf-8")
    result = pytester.runpytest("-p", "no:cacheprovider", "-rA")
    outcomes = result.parseoutcomes()
    assert result.ret == 0 and outcomes.get("passed", 0) >= 1, f"{block.id}:\n{result.stdout.str()}"
    assert set(outcomes) <= {"passed"}, f"{block.id}: {outcomes}"


def _expected_comments(source: str) -> list[tuple[str, object, int]]:
    """(expression, value, line) for each line ``expression  # literal`` whose comment is a Python literal."""
    checks = []
    for number, line in enumerate(source.splitlines(), 1):
        code, _, comment = line.partition("#")
        if not comment.strip() or not code.strip():
            continue
        try:
            ast.parse(code.strip(), mode="eval")
            value = ast.literal_eval(comment.strip())
        except (SyntaxError, ValueError):
            continue
        checks.append((code.strip(), value, number))
    return checks


def _same_output(shown: str, comment: str, where: str) -> None:
    """A ``print(...)  # output`` line printed what its comment says, numbers to the comment's decimals."""
    expected = comment[1:] if comment.startswith(" ") else comment  # "#  Hart 0.996" shows " Hart 0.996"
    for got, want in zip(shown.split(" "), expected.split(" "), strict=True):
        if re.fullmatch(r"-?\d+\.\d+", want):
            decimals = len(want.split(".")[1])
            assert f"{float(got):.{decimals}f}" == want, f"{where}: printed {shown!r}, the page says {expected!r}"
        else:
            assert got == want, f"{where}: printed {shown!r}, the page says {expected!r}"


@pytest.mark.parametrize("page", PYTHON_PAGES)
def test_python_blocks_run_in_order(page, pytester):
    """The page's Python blocks, in order, in one namespace. A block that defines ``test_...`` functions runs
    here too (its top-level code may define names later blocks use) and is run by pytest below."""
    namespace: dict = {"__name__": "docs_example"}
    ran = 0
    for block in (b for b in PYTHON if b.page == page):
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            exec(block.code(), namespace)  # noqa: S102 - our own documentation
        printed = [
            (number, line)
            for number, line in enumerate(block.text.splitlines(), 1)
            if line.startswith("print(") and "#" in line
        ]
        for (number, line), shown in zip(printed, output.getvalue().splitlines()):
            _same_output(shown, line.split("#", 1)[1], f"{block.page}:{block.line + number}")
        for expression, expected, number in _expected_comments(block.text):
            actual = eval(expression, namespace)  # noqa: S307 - our own documentation
            assert actual == expected, (
                f"{block.page}:{block.line + number}: {expression} is {actual!r}, the page says {expected!r}"
            )
        ran += 1
    assert ran >= 1


def test_the_tutorial_and_the_api_guide_run_python():
    assert {"docs/tutorial/induction.md", "docs/api/index.md"} <= set(PYTHON_PAGES)


TEST_BLOCKS = [b for b in PYTHON if re.search(r"^def test_", b.text, re.MULTILINE)]


@pytest.mark.parametrize("block", TEST_BLOCKS, ids=[b.id for b in TEST_BLOCKS])
def test_python_test_blocks_pass(block, pytester):
    pytester.makepyfile(test_readme=block.text)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=len(re.findall(r"^def test_", block.text, re.MULTILINE)))
