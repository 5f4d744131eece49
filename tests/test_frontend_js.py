"""The front end's pure helpers, with node's test runner."""

import shutil
import subprocess
from pathlib import Path

import pytest

JS = Path(__file__).parent.parent / "js"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_js_helpers():
    result = subprocess.run(["node", "--test", "test/"], cwd=JS, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_and_js_colormaps_agree():
    from cnnlens.core.display import COLORMAPS

    source = (JS / "colormaps.js").read_text()
    block = source[source.index("const STOPS"):source.index("};")]
    names = [line.strip().split(":")[0] for line in block.splitlines()[1:] if ":" in line]
    assert tuple(names) == COLORMAPS
