"""The ``darkroom`` command: ``serve`` one role, bring ``up`` all of them, ``submit`` an image."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from darkroom.contract.roles import DEFAULT_PORTS, ROLES
from darkroom.core.config import Config
from darkroom.core.runtime import configure_logging


def _serve(args: argparse.Namespace) -> int:
    config = Config.from_env(
        host=args.host,
        port=args.port,
        advertise_address=args.advertise_address,
        registry_address=args.registry_address,
        data_dir=args.data_dir,
        concurrency=args.concurrency,
        worker_mode=args.worker_mode,
        log_level=args.log_level,
    )
    configure_logging(config.log_level, role=args.role)
    importlib.import_module(f"darkroom.{args.role}.service").run(config)
    return 0


def _up(args: argparse.Namespace) -> int:
    from darkroom.supervisor import Supervisor

    ports = {role: getattr(args, f"{role}_port") for role in ROLES}
    return Supervisor(args.data_dir, ports, workers=args.workers).run()


def _submit(args: argparse.Namespace) -> int:
    from darkroom.submit import submit

    api_key = args.api_key or os.environ.get("DARKROOM_API_KEY")
    return submit(args.file, args.output, args.master, args.op, args.timeout, api_key)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="darkroom", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one role (settings also from DARKROOM_*)")
    serve.add_argument("role", choices=ROLES)
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--advertise-address", help="HOST:PORT other services use to reach this one")
    serve.add_argument("--registry-address", help="HOST:PORT of the registry")
    serve.add_argument("--data-dir", type=Path)
    serve.add_argument("--concurrency", type=int, help="worker: task loops (default: CPUs)")
    serve.add_argument("--worker-mode", choices=("process", "thread"))
    serve.add_argument("--log-level")
    serve.set_defaults(func=_serve)

    up = commands.add_parser("up", help="run every role on 127.0.0.1 until Ctrl-C")
    up.add_argument("--data-dir", type=Path, default=Path("darkroom-data"))
    up.add_argument("--workers", type=int, default=0, help="worker task loops (default: CPUs)")
    for role in ROLES:
        up.add_argument(f"--{role}-port", type=int, default=DEFAULT_PORTS[role])
    up.set_defaults(func=_up)

    submit = commands.add_parser("submit", help="upload an image, wait, save the result")
    submit.add_argument("file", type=Path)
    submit.add_argument("-o", "--output", type=Path)
    submit.add_argument("--master", default="127.0.0.1:3003", help="HOST:PORT of the master")
    submit.add_argument("--op", help="operation pipeline, e.g. resize:800x600,grayscale")
    submit.add_argument("--timeout", type=float, default=300.0, help="seconds to wait")
    submit.add_argument("--api-key", help="when the master asks for one (or DARKROOM_API_KEY)")
    submit.set_defaults(func=_submit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:  # bad configuration
        print(f"darkroom: {exc}", file=sys.stderr)
        return 2
