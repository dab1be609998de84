"""The README's pytest example, run as it is written: an inner pytest session on the example
taken from README.md ("From Python"), with the plugin and the suite's schema."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"

CONFTEST = '''
import pytest

@pytest.fixture(scope="session")
def walwatch_schema():
    return "CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL);"
'''


def readme_example() -> str:
    section = README.read_text().split("### From Python", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README.md has a python block under 'From Python'"
    return blocks[0]


def test_the_readme_example_passes(pytester: pytest.Pytester, walwatch_dsn: str) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_example=readme_example())
    result = pytester.runpytest_subprocess(
        f"--walwatch-dsn={walwatch_dsn}",
        "-o",
        f"walwatch_database_prefix=readme_{os.getpid()}",
        timeout=300,
    )
    result.assert_outcomes(passed=1)
