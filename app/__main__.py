"""``python -m app [--config PATH] [--host HOST] [--port PORT]`` (also the ``weft``
command); ``python -m app verify [--config PATH] [ID...]`` (app/verify.py);
``python -m app migrate [--config PATH]`` applies pending schema migrations and exits;
``python -m app tail URL ID`` and ``python -m app ls URL`` read a server (app/cli/).

Only the chosen command's modules are imported: the clients start in a fraction
of the time the server's imports (FastAPI, SQLAlchemy, botocore) take."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tail"]:
        from app.cli import tail

        return tail.main(argv[1:])
    if argv[:1] == ["ls"]:
        from app.cli import ls

        return ls.main(argv[1:])
    from app import serve

    return serve.main(argv)


if __name__ == "__main__":
    sys.exit(main())
