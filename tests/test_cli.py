import argparse

import pytest

from darkroom.cli import build_parser


def _parsers() -> list[argparse.ArgumentParser]:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [parser, *commands.choices.values()]


@pytest.mark.parametrize("parser", _parsers(), ids=lambda parser: parser.prog)
def test_help_is_plain_text_and_every_argument_says_what_it_is_and_its_default(parser):
    """The help showed reST backticks, and most arguments had no help and no default."""
    text = parser.format_help()
    assert "``" not in text and "(default: None)" not in text
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        described = formatter._get_help_string(action) or ""
        assert action.help, f"{parser.prog} {action.dest}: no help"
        if action.option_strings:
            assert "(default" in described, f"{parser.prog} {action.dest}: no default shown"


def test_up_help_shows_the_ports():
    up = next(parser for parser in _parsers() if parser.prog.endswith(" up"))
    assert "the master's port (default: 3003)" in " ".join(up.format_help().split())


def test_submit_help_shows_smart_crop_and_watermark():
    submit = next(parser for parser in _parsers() if parser.prog.endswith(" submit"))
    text = " ".join(submit.format_help().split())
    assert "resize:400x400:smart" in text and "watermark:© Me:top-left:0.4" in text


def _verify(env_secret: str, headers: dict[str, str], body: bytes, file=None):
    import subprocess
    import sys

    from harness.environment import service_env

    args = [f"--{name}={value}" for name, value in headers.items()]
    command = [sys.executable, "-m", "darkroom", "verify-webhook", *args]
    if file is not None:
        command.append(str(file))
    env = {**service_env(), "DARKROOM_WEBHOOK_SECRET": env_secret}
    return subprocess.run(
        command, input=b"" if file else body, env=env, capture_output=True, timeout=60
    )


def test_verify_webhook_says_valid_or_why_not(tmp_path):
    import base64
    import time

    from darkroom.core.signatures import WebhookSigner

    secret = "whsec_" + base64.b64encode(b"the receiver's secret....").decode()
    other = "whsec_" + base64.b64encode(b"some other secret........").decode()
    body = '{"id":"x","stateName":"finished"}'
    headers = WebhookSigner(secret).headers("msg_x", int(time.time()), body)
    flags = {f"webhook-{name.split('-')[1]}": value for name, value in headers.items()}
    valid = _verify(f"{other} {secret}", flags, body.encode())
    assert (valid.returncode, valid.stdout) == (0, b"valid\n"), valid.stderr
    (tmp_path / "body.json").write_text(body)
    assert _verify(secret, flags, b"", file=tmp_path / "body.json").returncode == 0
    tampered = _verify(secret, flags, body.replace("finished", "failed").encode())
    assert tampered.returncode == 1
    assert b"invalid webhook: No matching signature found" in tampered.stderr
    wrong_secret = _verify(other, flags, body.encode())
    assert wrong_secret.returncode == 1
    no_secret = _verify("", flags, body.encode())
    assert no_secret.returncode == 1 and b"DARKROOM_WEBHOOK_SECRET is empty" in no_secret.stderr


def test_verify_webhook_of_a_missing_file_says_so_without_a_traceback(tmp_path):
    flags = {"webhook-id": "msg_x", "webhook-timestamp": "1", "webhook-signature": "v1,x"}
    missing = _verify("whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB", flags, b"", tmp_path / "no")
    assert missing.returncode == 1
    assert missing.stderr.decode().strip().endswith("no: No such file or directory")
    assert b"Traceback" not in missing.stderr


def test_cancel_is_a_command_taking_the_job_id():
    args = build_parser().parse_args(["cancel", "A" * 22, "--master", "127.0.0.1:4003"])
    assert (args.id, args.master, args.func.__name__) == ("A" * 22, "127.0.0.1:4003", "_cancel")
