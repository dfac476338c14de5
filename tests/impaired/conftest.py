"""The impaired-path and fault tests fail, as the server tests do, when the relay or the event
loop logged an error: a path that loses, duplicates or stalls must never make code raise."""

from tests.server.conftest import no_relay_errors

__all__ = ["no_relay_errors"]
