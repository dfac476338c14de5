"""The relay wire protocol, sans-I/O: pure functions and state machines, no sockets.

`docs/protocol.md` is normative; every module here implements one section of it.
"""
