"""Arguments that several commands share: the case store and the address to listen on."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def default_db() -> str:
    return os.environ.get("IONM_DB") or str(Path.home() / ".local" / "share" / "ionm" / "cases.db")


def add_db_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=default_db(), help="case store (SQLite; default $IONM_DB or %(default)s)")


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError("--listen wants HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def fail(command: str, status: int, text: str) -> int:
    """Say on stderr why `ionm COMMAND` stops, and give its exit status."""
    print("ionm %s: %s" % (command, text), file=sys.stderr)
    return status


def scenario_error(name: str) -> str | None:
    """Why `name` (a scenario name or JSON path) cannot be simulated, naming the available scenarios; None if it can.
    Checked before anything starts: a bad name must not show up only once the board or a case is running."""
    import json

    from ionm_hw.patient import load_scenario

    try:
        load_scenario(name)
    except FileNotFoundError as exc:
        return "%s" % exc.args[0] if exc.args else "%s" % exc
    except json.JSONDecodeError as exc:
        return "scenario %r is not JSON: %s" % (name, exc)
    except (OSError, ValueError, TypeError, AttributeError) as exc:  # unreadable, or not a scenario object
        return "scenario %r cannot be read: %s" % (name, exc)
    return None
