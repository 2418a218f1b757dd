"""The wire protocol modules from protocol/, the very files the board runs, loaded for the host.

protocol/*.py are flat MicroPython modules (the board imports them as `framing`, `cbor`, `messages`); here
they are loaded by path under ionm.protocol.* so that host and board can never drift apart. They import
nothing from each other, which is what makes this possible.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

from ionm import paths


def _load(name: str) -> Any:
    full = "%s.%s" % (__name__, name)
    if full in sys.modules:
        return sys.modules[full]
    spec = importlib.util.spec_from_file_location(full, paths.protocol_dir() / ("%s.py" % name))
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[full] = module
    spec.loader.exec_module(module)
    return module


cbor = _load("cbor")
framing = _load("framing")
messages = _load("messages")
rice = _load("rice")
