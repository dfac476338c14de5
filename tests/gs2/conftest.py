"""As in the server tests: a relay that logged an error fails the test."""

from tests.server.conftest import no_relay_errors

__all__ = ["no_relay_errors"]
