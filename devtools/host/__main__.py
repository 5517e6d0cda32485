"""`python -m devtools.host`: serve function_app on 127.0.0.1 until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from azure.core.exceptions import AzureError

from devtools.host.config import HostError, configure_logging
from devtools.host.easyauth import sign_in_help
from devtools.host.server import DEFAULT_PORT, REPO_ROOT, DevHost


def main(argv: list[str] | None = None) -> int:
    """Serve function_app until Ctrl-C; 1 when it cannot start."""
    parser = argparse.ArgumentParser(prog="python -m devtools.host", description=__doc__)
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="HTTP port on 127.0.0.1 (default 7071)"
    )
    parser.add_argument(
        "--settings",
        type=Path,
        default=REPO_ROOT / "local.settings.json",
        help="local.settings.json whose Values fill in unset environment variables",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)

    async def serve() -> None:
        host = DevHost(port=args.port, local_settings=args.settings)
        await host.start()
        print(
            f"Dev host for {REPO_ROOT / 'function_app.py'} on {host.base_url}\n\nFunctions:\n",
            file=sys.stderr,
        )
        for line in host.describe():
            print(f"        {line}", file=sys.stderr)
        print(
            "", *sign_in_help(host.base_url), "\nPress Ctrl-C to stop.", sep="\n", file=sys.stderr, flush=True
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await host.stop()

    try:
        asyncio.run(serve())
    except HostError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except AzureError as exc:
        print(
            f"error: the queue storage did not answer ({exc}); is Azurite running (make run)?",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(f"error: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
