"""The `relay` console script: one subcommand per part of the system, each with its own flags.

Exit status: 0 done; 2 a wrong command line or setting (one line names it); 1 it could not do
what was asked (a port in use, ...; one line says why).
"""

from __future__ import annotations

import importlib
import os
import sys

import relay
from relay.settings import EXIT_FAILURE, EXIT_USAGE, fail

COMMANDS = {
    "dev": ("relay.control.cli", "dev_main", "the whole system on this machine, for development"),
    "control": ("relay.control.cli", "control_main", "the control plane (GS2-Realtime API, relays per room)"),
    "serve": ("relay.host.standby", "main", "one relay for one room"),
    "token": ("relay.control.cli", "token_main", "print a user access token"),
}


def usage() -> str:
    lines = [
        "usage: relay COMMAND [options]      (relay COMMAND --help for its options)",
        "",
        "A self-hostable GS2-Realtime: a control plane and an encrypted relay per room.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<8} {text}" for name, (_, _, text) in COMMANDS.items()]
    lines += ["", "options:", "  -h, --help  show this help", "  --version   show the version"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(usage(), file=sys.stderr)
        return EXIT_USAGE
    if args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(f"relay {relay.__version__}")
        return 0
    if args[0] not in COMMANDS:
        return fail(
            "relay", f"unknown command {args[0]!r}: the commands are {', '.join(COMMANDS)} (see relay --help)"
        )
    module, func, _ = COMMANDS[args[0]]
    try:
        result = getattr(importlib.import_module(module), func)(args[1:])
    except BrokenPipeError:  # `relay token | head -1`: the reader left; no traceback for that
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor at exit's flush
        return EXIT_FAILURE
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
