"""The architecture is a contract (pyproject.toml [tool.importlinter]): checked with every test run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_layers_import_downward_only_and_the_runtime_needs_no_torch() -> None:
    beside = Path(sys.executable).parent / "lint-imports"  # the venv's, also when its bin is not on PATH
    lint = str(beside) if beside.is_file() else shutil.which("lint-imports")
    result = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "0 broken" in result.stdout, result.stdout + result.stderr


def test_no_test_reaches_into_private_names() -> None:
    """Tests use the public API only, so that refactoring keeps them meaningful."""
    offenders = [
        f"{path.name}: {line.strip()}"
        for path in sorted((REPO / "tests").glob("*.py"))
        for line in path.read_text().splitlines()
        if line.startswith("from robust_ad")
        and any(name.strip().startswith("_") for name in line.split("import")[-1].split(","))
    ]
    assert not offenders, offenders
