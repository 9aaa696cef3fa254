"""The shipped ``behaviors/`` run wherever a user copies them: models and SAEs are named by ``zoo:`` or by name,
never by a path into this repository, and nothing outside the copied folder is read."""

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

SHIPPED = Path(__file__).resolve().parents[2] / "behaviors"


@pytest.fixture
def copied(pytester) -> Path:
    """An empty project holding only a copy of the shipped behaviors/ (no pytest.ini, no pyproject)."""
    target = pytester.path / "behaviors"
    shutil.copytree(SHIPPED, target, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    return target


def test_no_shipped_spec_names_a_path_into_the_repository():
    for spec in sorted(SHIPPED.rglob("*.y*ml")):
        for n, line in enumerate(spec.read_text(encoding="utf-8").splitlines(), 1):
            assert not re.search(r"\.\./|interptest/zoo", line.split("#")[0]), f"{spec.name}:{n}: {line.strip()}"


def test_every_copied_spec_collects(pytester, copied):
    result = pytester.runpytest("behaviors", "--co", "-q")
    assert result.ret == 0, result.stdout.str()[-3000:]
    ids = [line for line in result.stdout.lines if "::" in line]
    files = {line.split("::")[0] for line in ids}
    shipped = {str(p.relative_to(SHIPPED.parent)) for p in SHIPPED.rglob("*.yaml")}
    assert files == shipped, sorted(shipped - files)


def test_copied_specs_run_with_keyword_selection_and_junit_xml(pytester, copied):
    # the SAE spec (named by zoo:) and the IOI spec on interptest-tiny, by keyword; the rest deselected
    result = pytester.runpytest(
        "behaviors", "-k", "features or mary-john-store", "--junitxml=junit.xml", "-p", "no:cacheprovider"
    )
    outcomes = result.parseoutcomes()
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert outcomes.get("passed", 0) >= 3 and outcomes.get("deselected", 0) >= 1, outcomes
    root = ET.parse(pytester.path / "junit.xml").getroot()
    names = {case.get("name") for case in root.iter("testcase")}
    assert {"alex-hart-features", "mary-john-features", "mary-john-store"} <= names, names
    assert all(suite.get("failures") == "0" and suite.get("errors") == "0" for suite in root.iter("testsuite"))
