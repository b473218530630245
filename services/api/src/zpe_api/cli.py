"""``zpe-api serve``: run the API on the current settings.

The ``zpe`` command of the client package (``zpe_client.cli``) runs this for
``zpe serve`` when the API is installed; every other ``zpe`` command is a client
of the API over HTTP.
"""

from __future__ import annotations

import argparse
import os
import sys


def serve(host: str, port: int) -> int:
    """Start uvicorn on ``host:port``; 2 if the settings forbid listening there."""
    import uvicorn

    from zpe_api.listen import check_listen_address
    from zpe_api.main import create_app
    from zpe_core.errors import ConfigurationError
    from zpe_core.observability.logs import configure_logging
    from zpe_core.settings import get_settings

    configure_logging(os.environ.get("ZPE_LOG_LEVEL", "INFO"))
    try:
        check_listen_address(get_settings(), host)
    except ConfigurationError as exc:
        print(f"zpe serve: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(), host=host, port=port, log_config=None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zpe-api", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run the API on the current settings")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return serve(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
