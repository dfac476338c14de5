"""Names made into path components that can neither leave their folder nor meet another's.

GS2 names may be `.` or `..`, or look like a file the control plane keeps itself (`standby.log`);
a GRN holds `:` and `/`. `component()` keeps letters, digits, `_` and `-`, writes every other
character as %XX (its UTF-8 bytes), so different names give different components, none of them
with a dot or a separator; one longer than MAX_COMPONENT is cut and ends in `~` and a digest
of the whole name (escaping never writes `~`, so a cut name cannot meet an uncut one).
"""

from __future__ import annotations

import hashlib
import string

MAX_COMPONENT = 200
_KEEP = frozenset(string.ascii_letters + string.digits + "_-")


def component(name: str) -> str:
    """`name` as one path component (see the module docstring)."""
    out = "".join(
        c if c in _KEEP else "".join(f"%{b:02X}" for b in c.encode(errors="surrogatepass")) for c in name
    )
    if len(out) > MAX_COMPONENT or not out:
        digest = hashlib.sha256(name.encode(errors="surrogatepass")).hexdigest()[:16]
        out = out[: MAX_COMPONENT - len(digest) - 1] + "~" + digest
    return out
