"""Self-hostable GS2-Realtime: an encrypted per-room relay and a GS2-compatible control plane."""

__version__ = "0.1.0"
