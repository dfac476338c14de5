"""`python -m tests.fuzz NAME [libFuzzer flags] [corpus dirs]`: one fuzz target, with the relay's
own modules instrumented for coverage (only those: instrumenting every loaded module takes
longer than a short run)."""

import sys

import atheris

with atheris.instrument_imports(include=["relay"]):
    from tests.fuzz.targets import main

sys.exit(main(sys.argv[1:]))
