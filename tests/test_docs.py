"""The documentation site builds with warnings as errors, and the quickstart's commands are valid."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from opencir.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def test_docs_build_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert result.returncode == 0, result.stderr[-3000:]
    api = (tmp_path / "site" / "reference" / "index.html").read_text()
    for name in ("load_dataset", "load_model", "evaluate", "Retriever", "load_run_config", "build_dataclass"):
        assert f'id="opencir.' in api and name in api, name
    assert (tmp_path / "site" / "quickstart" / "index.html").is_file()


def _shell_commands(markdown: str) -> list[str]:
    """The ``opencir`` command lines of the ```bash blocks (continuation lines joined)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            lines.extend(part.strip() for part in line.split("&&") if part.strip().startswith("opencir "))
    return lines


def test_quickstart_commands_parse_with_the_cli():
    commands = _shell_commands((REPO / "docs" / "quickstart.md").read_text())
    assert len(commands) >= 8
    parser = build_parser()
    for line in commands:
        argv = shlex.split(line, comments=True)[1:]
        if argv == ["--version"]:
            continue
        parser.parse_args(argv)  # exits (fails the test) on an unknown command or option


def test_quickstart_python_uses_only_existing_names():
    import importlib

    code = re.search(r"```python\n(.*?)```", (REPO / "docs" / "quickstart.md").read_text(), re.S).group(1)
    for module, names in re.findall(r"^from (opencir[\w.]*) import (.+)$", code, re.M):
        imported = importlib.import_module(module)
        for name in names.split(","):
            assert hasattr(imported, name.strip()), f"{module}.{name.strip()}"
