"""``python -m airflow_provider_ciexport.tools.sandbox``: run the sandbox in the foreground."""

from __future__ import annotations

import argparse
import gc
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from airflow_provider_ciexport.tools.sandbox.config import ConfigError, SandboxConfig
from airflow_provider_ciexport.tools.sandbox.connections import (
    AC_CONN_ID,
    CC_CONN_ID,
    ac_connection,
    cc_connection,
    connection_env,
)
from airflow_provider_ciexport.tools.sandbox.server import PortUnavailableError, SandboxServer


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_ciexport.tools.sandbox",
        description="Local fake of the ActiveCampaign and Constant Contact APIs.",
    )
    parser.add_argument("--port", type=int, default=8025, help="port on 127.0.0.1 (0 = any free one)")
    parser.add_argument("--rate-scale", type=float, default=1.0, help="multiply every rate limit by this")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds before every API call is answered"
    )
    parser.add_argument(
        "--import-latency", type=float, default=0.0, help="more seconds before import POSTs are answered"
    )
    parser.add_argument(
        "--timing",
        choices=("sandbox", "strict"),
        default="sandbox",
        help="timing model of the rate limits and latency: the sandbox's own (default), or strict sliding "
        "windows that count refused requests too, checked on arrival, with a latency drawn per request",
    )
    parser.add_argument(
        "--strict-jitter",
        type=float,
        default=0.02,
        help="strict timing: up to this many more seconds on every API call (default 0.02)",
    )
    parser.add_argument("--rotating-refresh-tokens", action="store_true", help="single-use refresh tokens")
    parser.add_argument("--ac-auth-error-status", type=int, choices=(401, 403), default=403)
    parser.add_argument("--ac-rate-limit-style", choices=("429", "400", "503"), default="429")
    parser.add_argument("--cc-daily-quota", type=int, default=10000)
    parser.add_argument(
        "--cc-error-shape",
        choices=("list", "object", "documented"),
        default="documented",
        help="Constant Contact error bodies: a list of objects, one object, or (default) one object for 429 only",
    )
    parser.add_argument(
        "--ac-other-app-imports-per-minute",
        type=float,
        default=0.0,
        help="simulate another app spending this many of the account's bulk imports a minute",
    )
    parser.add_argument(
        "--ac-other-app-requests-per-second",
        type=float,
        default=0.0,
        help="simulate another app spending this many of the account's requests a second",
    )
    parser.add_argument(
        "--cc-other-app-requests-per-second",
        type=float,
        default=0.0,
        help="simulate another app spending this many of the API key's requests a second",
    )
    parser.add_argument(
        "--record-bodies",
        action="store_true",
        help="keep request bodies (emails, refresh tokens) in /_sandbox/requests; off by default",
    )
    parser.add_argument("--ready-file", type=Path, help="write the base URL here once listening")
    return parser.parse_args(argv)


def connection_help(url: str) -> str:
    """How to point the provider's connections at a sandbox running at ``url``."""
    env = connection_env({AC_CONN_ID: ac_connection(url), CC_CONN_ID: cc_connection(url)})
    return "\n".join(
        [
            f"Sandbox listening on {url}",
            "",
            "In another shell, these connections point the provider's operators at it:",
            *(f"  export {name}='{value}'" for name, value in env.items()),
            "",
            f"What a list holds: curl -s {url}/_sandbox/ac/lists/2/contacts",
            f"Control API: {url}/_sandbox/stats, /_sandbox/requests, /_sandbox/reset ...",
            "Ctrl-C to stop.",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run until interrupted."""
    args = parse_args(argv)
    try:
        config = SandboxConfig().with_overrides(
            {
                "rate_scale": args.rate_scale,
                "latency_s": args.latency,
                "import_latency_s": args.import_latency,
                "timing": args.timing,
                "strict_jitter_s": args.strict_jitter,
                "cc_rotating_refresh_tokens": args.rotating_refresh_tokens,
                "ac_auth_error_status": args.ac_auth_error_status,
                "ac_rate_limit_style": args.ac_rate_limit_style,
                "cc_daily_quota": args.cc_daily_quota,
                "cc_error_shape": args.cc_error_shape,
                "ac_other_app_imports_per_minute": args.ac_other_app_imports_per_minute,
                "ac_other_app_requests_per_second": args.ac_other_app_requests_per_second,
                "cc_other_app_requests_per_second": args.cc_other_app_requests_per_second,
                "record_bodies": args.record_bodies,
            }
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    # A sandbox holding a million contacts has millions of GC-tracked objects; full collections then
    # stall the event loop for 100+ ms, delaying when requests are seen and so drawing 429s that a
    # real server would not send. Objects from start-up are frozen, and collections made rare.
    gc.collect()
    gc.freeze()
    gc.set_threshold(200_000, 50, 1_000)
    server = SandboxServer(config, port=args.port)
    try:
        server.start()
    except PortUnavailableError as exc:
        free = _free_port()
        print(
            f"error: {exc.strerror}. Choose another port, e.g. one free now: make sandbox PORT={free} "
            f"(or --port {free}; 0 = any free one).",
            file=sys.stderr,
        )
        return 1
    with server:
        print(connection_help(server.url), flush=True)
        if args.ready_file is not None:
            tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
            tmp.write_text(server.url + "\n")
            os.replace(tmp, args.ready_file)  # appear complete or not at all
        while not stop.wait(0.5):
            pass
    if args.ready_file is not None:
        args.ready_file.unlink(missing_ok=True)
    return 0


def _free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now (the one the system gives a new socket)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
