"""The one thing pyproject.toml cannot say without setuptools' experimental table: the C part.

relay/protocol/_aead.c (DATA sealing and opening), relay/server/_datagrams.c (a pass's UDP
datagrams in one sendmmsg), relay/server/_ratelimit.c (token buckets that C code can spend),
relay/server/_pacing.c (the pacer's controller, which C code can sample) and relay/server/_lane.c
(the port's read) are built where a C compiler and OpenSSL's headers are (Debian: gcc, libssl-dev;
docs/architecture.md, "The C part"). All are optional: without them the install goes on and the
relay runs the same work in Python (relay/protocol/packets.py, relay/server/links.py,
relay/server/ratelimit.py, relay/server/pacing.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "relay.protocol._aead",
            sources=["relay/protocol/_aead.c"],
            depends=["relay/protocol/_aead.h"],
            libraries=["crypto"],
            optional=True,
        ),
        Extension("relay.server._datagrams", sources=["relay/server/_datagrams.c"], optional=True),
        Extension(
            "relay.server._ratelimit",
            sources=["relay/server/_ratelimit.c"],
            depends=["relay/server/_ratelimit.h"],  # rebuilt when it changes; in the sdist
            optional=True,
        ),
        Extension(
            "relay.server._pacing",
            sources=["relay/server/_pacing.c"],
            depends=["relay/server/_pacing.h"],
            optional=True,
        ),
        Extension(
            "relay.server._lane",
            sources=["relay/server/_lane.c"],
            depends=["relay/protocol/_aead.h", "relay/server/_ratelimit.h", "relay/server/_pacing.h"],
            libraries=["crypto"],  # SHA-256: a GS2 Container's HMAC
            optional=True,
        ),
    ]
)
