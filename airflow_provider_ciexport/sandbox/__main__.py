"""``python -m airflow_provider_ciexport.sandbox``: run the sandbox in the foreground."""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from airflow_provider_ciexport.sandbox.config import ConfigError, SandboxConfig
from airflow_provider_ciexport.sandbox.seed import SEED
from airflow_provider_ciexport.sandbox.server import SandboxServer


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_ciexport.sandbox",
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
    parser.add_argument("--rotating-refresh-tokens", action="store_true", help="single-use refresh tokens")
    parser.add_argument("--ac-auth-error-status", type=int, choices=(401, 403), default=403)
    parser.add_argument("--ac-rate-limit-style", choices=("429", "400", "503"), default="429")
    parser.add_argument("--cc-daily-quota", type=int, default=10000)
    parser.add_argument("--no-record-bodies", action="store_true", help="keep request bodies out of the log")
    parser.add_argument("--ready-file", type=Path, help="write the base URL here once listening")
    return parser.parse_args(argv)


def connection_help(url: str) -> str:
    """How to point the provider's connections at a sandbox running at ``url``."""
    return "\n".join(
        [
            f"Sandbox listening on {url}",
            "",
            "ActiveCampaign connection (activecampaign):",
            f"  host     {url}",
            f"  password {SEED.ac_api_key}",
            "Constant Contact connection (constantcontact):",
            f"  login    {SEED.cc_client_id}",
            f"  password {SEED.cc_client_secret}",
            f"  extras   refresh_token={SEED.cc_refresh_token}",
            f"           api_base_url={url}/v3",
            f"           token_url={url}/oauth2/default/v1/token",
            "",
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
                "cc_rotating_refresh_tokens": args.rotating_refresh_tokens,
                "ac_auth_error_status": args.ac_auth_error_status,
                "ac_rate_limit_style": args.ac_rate_limit_style,
                "cc_daily_quota": args.cc_daily_quota,
                "record_bodies": not args.no_record_bodies,
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
    with SandboxServer(config, port=args.port) as server:
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


if __name__ == "__main__":
    sys.exit(main())
