"""The host's import layers (docs/ARCHITECTURE.md, [tool.importlinter] in pyproject.toml) hold, and an upward
import is caught: a copy of the package with one planted is refused by the same contracts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([LINT, "--no-logo", "--no-cache", "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_tree_keeps_its_layers() -> None:
    res = _lint()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 kept, 0 broken" in res.stdout


@pytest.mark.parametrize("module, planted, contract", [
    ("board/link.py", "from ionm.console import engine", "host layers"),  # the board reaching up to the console
    ("case/store.py", "from ionm.console.server import ConsoleServer", "host layers"),  # the record on the web
    ("pipeline/peaks.py", "from ionm.cli import common", "host layers"),  # a package importing a command module
    ("case/export.py", "    from ionm.cli.common import default_db", "host layers"),  # a lazy import counts too
], ids=["board->console", "case->console", "pipeline->cli", "lazy case->cli"])
def test_an_upward_import_breaks_the_contract(tmp_path: Path, module: str, planted: str, contract: str) -> None:
    shutil.copytree(ROOT / "host" / "ionm", tmp_path / "ionm", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "ionm" / module
    text = target.read_text()
    if planted.startswith(" "):  # inside a function: after the first def's signature line
        head, sep, tail = text.partition("\ndef ")
        sig, nl, body = tail.partition(":\n")
        text = head + sep + sig + nl + planted + "\n" + body
    else:
        text = text.replace("from __future__ import annotations\n", "from __future__ import annotations\n\n"
                            + planted + "  # noqa\n", 1)
    target.write_text(text)
    res = _lint(pythonpath=tmp_path)
    assert res.returncode != 0, res.stdout
    assert contract in res.stdout and "BROKEN" in res.stdout
    assert "ionm." + module.replace("/", ".").removesuffix(".py") in res.stdout  # the offender is named
