"""The suite's own machinery: what it relies on to render and install each combination once."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.projects import run

GROUPED = """\
import pytest

pytestmark = pytest.mark.xdist_group("one")


@pytest.mark.parametrize("n", range(8))
def test_grouped(n: int) -> None:
    pass
"""


def test_xdist_sends_a_group_to_one_worker(tmp_path: Path) -> None:
    """`--dist loadgroup` (pyproject.toml) runs the tests of one xdist_group on one worker:
    the tests of a combination share its rendering and its environment only there."""
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-n", "2"]
    command += ["--dist", "loadgroup", "-c", "/dev/null", "--rootdir", str(tmp_path)]
    output = run([*command, "test_grouped.py"], tmp_path)
    workers = re.findall(r"^\[(gw\d+)\] .* PASSED", output, flags=re.MULTILINE)
    assert len(workers) == 8, output
    assert len(set(workers)) == 1, output
