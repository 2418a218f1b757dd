"""`ionm` command line: one module per subcommand, thin argument parsing that calls the packages.

Each subcommand module defines HELP (one line), add_arguments(parser) and run(args) -> int (exit status).
Subcommand modules keep heavy imports (matplotlib, scipy, web stack) inside run(), so `ionm stream`
starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, one-line help)
    "sim": ("ionm.cli.sim", "run the virtual board (firmware on MicroPython + hardware model)"),
    "stream": ("ionm.cli.stream", "stream from a board and print link statistics"),
    "demo": ("ionm.cli.demo", "the virtual board and the console, for a first look"),
    "evaluate": ("ionm.cli.evaluate", "evaluate a sweep file (.npz) or an EDF/BDF recording (free-run EMG) offline"),
    "console": ("ionm.cli.console", "the case console: live waveforms, trends, alerts, notes, stimulation"),
    "hub": ("ionm.cli.hub", "the oversight hub: every room's live case from NATS JetStream, in a browser"),
    "users": ("ionm.cli.users", "console user accounts (technologist, physician, read-only)"),
    "replay": ("ionm.cli.replay", "play a recorded case through the console"),
    "export": ("ionm.cli.export", "export a recorded case as EDF+/BDF+ or CSV"),
    "report": ("ionm.cli.report", "write a recorded case's PDF report"),
    "verify": ("ionm.cli.verify", "check a recorded case for tampering against its ledger and anchor"),
    "flash": ("ionm.cli.flash", "build the firmware and flash it to a board, or update a running board"),
    "calibrate": ("ionm.cli.calibrate", "calibrate a board's amplifier and stimulator"),
    "bench": ("ionm.cli.bench", "verify a board against its specification with a signal generator"),
    "impedance": ("ionm.cli.impedance", "check the electrodes: each channel's and stimulator output's impedance"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ionm", description="Open intraoperative neuromonitoring stack")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            sub._name_parser_map.pop(name, None)  # not built yet: leave it out of the CLI
            sub._choices_actions = [a for a in sub._choices_actions if a.dest != name]
            continue
        mod.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mod = importlib.import_module(args._module)
    try:
        status = mod.run(args)
    except KeyboardInterrupt:
        status = 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
