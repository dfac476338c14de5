"""The `relay` console script. Each subcommand belongs to one component and parses its own flags.

relay dev       the whole system on this machine (control plane + local relays)
relay control   the control plane alone
relay serve     one relay (one room) from the command line
relay token     mint a user access token
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "dev": ("relay.control.cli", "dev_main", "run the control plane and local relays on this machine"),
    "control": ("relay.control.cli", "control_main", "run the control plane"),
    "serve": ("relay.host.standby", "main", "run one relay for one room"),
    "token": ("relay.control.cli", "token_main", "mint a user access token"),
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        print("usage: relay {" + ",".join(COMMANDS) + "} [options]\n")
        for name, (_, _, help_text) in COMMANDS.items():
            print(f"  {name:<8} {help_text}")
        return 0 if args and args[0] in ("-h", "--help") else 2
    module, func, _ = COMMANDS[args[0]]
    result = getattr(importlib.import_module(module), func)(args[1:])
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
