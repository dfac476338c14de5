"""The one thing pyproject.toml cannot say without setuptools' experimental table: the C part.

relay/protocol/_aead.c (DATA sealing and opening, docs/architecture.md) is built where a C
compiler and OpenSSL's headers are (Debian: gcc, libssl-dev). It is optional: without them the
install goes on and the relay runs the same code in Python (relay/protocol/packets.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "relay.protocol._aead",
            sources=["relay/protocol/_aead.c"],
            libraries=["crypto"],
            optional=True,
        )
    ]
)
