"""The one thing pyproject.toml cannot say without setuptools' experimental table: the C part.

relay/protocol/_aead.c (DATA sealing and opening) and relay/server/_datagrams.c (a pass's UDP
datagrams in one sendmmsg) are built where a C compiler and OpenSSL's headers are (Debian: gcc,
libssl-dev; docs/architecture.md, "The C part"). Both are optional: without them the install
goes on and the relay runs the same work in Python (relay/protocol/packets.py,
relay/server/links.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "relay.protocol._aead",
            sources=["relay/protocol/_aead.c"],
            libraries=["crypto"],
            optional=True,
        ),
        Extension("relay.server._datagrams", sources=["relay/server/_datagrams.c"], optional=True),
    ]
)
