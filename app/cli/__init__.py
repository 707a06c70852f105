"""Command-line tools that talk to a Weft server; ``bin/stream`` runs :mod:`app.cli.stream`.

Only the standard library and httpx may be imported here: the pipe client must
run on a build machine that has neither FastAPI nor the server installed.
"""
