"""The darkroom command: serve one role, bring up all of them, submit an image, cancel a job,
check a webhook."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from darkroom.contract.roles import DEFAULT_PORTS, ROLES
from darkroom.core import logs
from darkroom.core.atomicfile import OWNER_ONLY_UMASK
from darkroom.core.config import LOG_FORMATS, Config
from darkroom.core.lifecycle import stop_with_parent_from_env
from darkroom.core.runtime import configure_logging

ENV_NOTE = "Every setting can also be given as a DARKROOM_* environment variable (see README)."


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, unless there is none or the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _serve(args: argparse.Namespace) -> int:
    os.umask(OWNER_ONLY_UMASK)
    config = Config.from_env(
        host=args.host,
        port=args.port,
        advertise_address=args.advertise_address,
        registry_address=args.registry_address,
        data_dir=args.data_dir,
        concurrency=args.concurrency,
        worker_mode=args.worker_mode,
        log_level=args.log_level,
        log_format=args.log_format,
        trusted_network=args.trusted_network or None,
    )
    configure_logging(config.log_level, config.log_format, role=args.role)
    stop_with_parent_from_env()  # started by darkroom up: stop with it
    importlib.import_module(f"darkroom.{args.role}.service").run(config)
    return 0


def _up(args: argparse.Namespace) -> int:
    from darkroom.supervisor import Supervisor

    os.umask(OWNER_ONLY_UMASK)  # the children inherit it
    config = Config.from_env(log_format=args.log_format)
    # The children write to the same terminal or file: they log as the supervisor does.
    log_format = logs.resolve_format(config.log_format)
    os.environ["DARKROOM_LOG_FORMAT"] = log_format
    configure_logging(config.log_level, log_format, role="up")
    ports = {role: getattr(args, f"{role}_port") for role in ROLES}
    return Supervisor(args.data_dir, ports, workers=args.workers).run()


def _submit(args: argparse.Namespace) -> int:
    from darkroom.submit import submit

    api_key = args.api_key or os.environ.get("DARKROOM_API_KEY")
    return submit(
        args.file, args.output, args.master, args.op, args.timeout, api_key, webhook=args.webhook
    )


def _verify_webhook(args: argparse.Namespace) -> int:
    """Exit 0 when the body and headers carry a valid signature of one of the secrets, else 1."""
    from darkroom.core.signatures import VerificationError, WebhookSigner

    signer = WebhookSigner(os.environ.get("DARKROOM_WEBHOOK_SECRET", ""))
    if not signer:
        print("darkroom: DARKROOM_WEBHOOK_SECRET is empty: set it to the secret", file=sys.stderr)
        return 1
    try:
        body = args.body.read_bytes() if args.body else sys.stdin.buffer.read()
    except OSError as exc:
        print(f"darkroom: cannot read {args.body}: {exc.strerror}", file=sys.stderr)
        return 1
    headers = {
        "webhook-id": args.webhook_id,
        "webhook-timestamp": args.webhook_timestamp,
        "webhook-signature": args.webhook_signature,
    }
    try:
        signer.verify(body.decode("utf-8"), headers)
    except UnicodeDecodeError:
        print("darkroom: invalid webhook: the body is not UTF-8 JSON", file=sys.stderr)
        return 1
    except VerificationError as exc:
        print(f"darkroom: invalid webhook: {exc}", file=sys.stderr)
        return 1
    print("valid")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from darkroom.submit import cancel

    return cancel(args.id, args.master, args.api_key or os.environ.get("DARKROOM_API_KEY"))


def _add_log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text: one readable line per event; json: one JSON object per line; auto: text on"
        " a terminal, JSON otherwise (default: DARKROOM_LOG_FORMAT, else auto)",
    )


def _serve_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="run one role",
        description="Run one role.",
        epilog=ENV_NOTE,
        formatter_class=_HelpFormatter,
    )
    serve.add_argument("role", choices=ROLES, help="the role to run")
    serve.add_argument("--host", help="address to listen on (default: DARKROOM_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: the role's own)")
    serve.add_argument(
        "--advertise-address",
        help="HOST:PORT other services use to reach this one (default: HOST:PORT)",
    )
    serve.add_argument(
        "--registry-address", help="HOST:PORT of the registry (default: 127.0.0.1:3000)"
    )
    serve.add_argument("--data-dir", type=Path, help="where state is kept (default: ./data)")
    serve.add_argument("--concurrency", type=int, help="worker: task loops (default: one per CPU)")
    serve.add_argument(
        "--worker-mode",
        choices=("process", "thread"),
        help="worker: run task loops as processes or threads (default: process)",
    )
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default: INFO)")
    serve.add_argument(
        "--trusted-network",
        action="store_true",
        help="run without an internal token: anyone who can reach the role may call its internal"
        " routes (default: DARKROOM_TRUSTED_NETWORK, else refuse to start without a token)",
    )
    _add_log_format(serve)
    serve.set_defaults(func=_serve)


def _up_parser(commands: argparse._SubParsersAction) -> None:
    up = commands.add_parser(
        "up",
        help="run every role on 127.0.0.1 until Ctrl-C",
        description="Run every role on 127.0.0.1 until Ctrl-C, restarting any that dies.",
        epilog=ENV_NOTE,
        formatter_class=_HelpFormatter,
    )
    up.add_argument(
        "--data-dir", type=Path, default=Path("darkroom-data"), help="where state is kept"
    )
    up.add_argument("--workers", type=int, default=0, help="worker task loops (0: one per CPU)")
    for role in ROLES:
        up.add_argument(
            f"--{role}-port", type=int, default=DEFAULT_PORTS[role], help=f"the {role}'s port"
        )
    _add_log_format(up)
    up.set_defaults(func=_up)


def _submit_parser(commands: argparse._SubParsersAction) -> None:
    submit = commands.add_parser(
        "submit",
        help="upload an image, wait, save the result",
        description="Upload an image to the master, wait for the job, save the result.",
        formatter_class=_HelpFormatter,
    )
    submit.add_argument("file", type=Path, help="the image to upload")
    submit.add_argument(
        "-o",
        "--output",
        type=Path,
        help="where to save the result (default: FILE-darkroom.EXT, EXT from the result's type)",
    )
    submit.add_argument("--master", default="127.0.0.1:3003", help="HOST:PORT of the master")
    submit.add_argument(
        "--op",
        help="operation pipeline, e.g. resize:800x600,grayscale or "
        "'resize:400x400:smart,watermark:© Me:top-left:0.4', steps as in the README's "
        "Operations table (default: the master's)",
    )
    submit.add_argument("--timeout", type=float, default=300.0, help="seconds to wait")
    submit.add_argument(
        "--api-key", help="when the master asks for one (default: DARKROOM_API_KEY)"
    )
    submit.add_argument(
        "--webhook",
        metavar="URL",
        help="https URL the master POSTs the job's signed status to when it ends (default: none)",
    )
    submit.set_defaults(func=_submit)


def _verify_webhook_parser(commands: argparse._SubParsersAction) -> None:
    verify = commands.add_parser(
        "verify-webhook",
        help="check a webhook's signature",
        description="Check that a webhook request was signed with the secret in"
        " DARKROOM_WEBHOOK_SECRET (several, space-separated: any of them) and sent in the last"
        " 5 minutes; exits 0 when it was, 1 saying why when not.",
        formatter_class=_HelpFormatter,
    )
    for header in ("id", "timestamp", "signature"):
        verify.add_argument(
            f"--webhook-{header}",
            required=True,
            help=f"the request's webhook-{header} header (default: none, required)",
        )
    verify.add_argument(
        "body", type=Path, nargs="?", help="a file holding the request's body (else stdin)"
    )
    verify.set_defaults(func=_verify_webhook)


def _cancel_parser(commands: argparse._SubParsersAction) -> None:
    cancel = commands.add_parser(
        "cancel",
        help="cancel a job",
        description="Cancel a job that has not ended: it is never processed further.",
        formatter_class=_HelpFormatter,
    )
    cancel.add_argument("id", help="the job id darkroom submit printed")
    cancel.add_argument("--master", default="127.0.0.1:3003", help="HOST:PORT of the master")
    cancel.add_argument(
        "--api-key", help="when the master asks for one (default: DARKROOM_API_KEY)"
    )
    cancel.set_defaults(func=_cancel)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="darkroom", description=__doc__, epilog=ENV_NOTE, formatter_class=_HelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, title="commands")
    _serve_parser(commands)
    _up_parser(commands)
    _submit_parser(commands)
    _verify_webhook_parser(commands)
    _cancel_parser(commands)
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
