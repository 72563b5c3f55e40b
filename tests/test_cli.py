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


def test_cancel_is_a_command_taking_the_job_id():
    args = build_parser().parse_args(["cancel", "A" * 22, "--master", "127.0.0.1:4003"])
    assert (args.id, args.master, args.func.__name__) == ("A" * 22, "127.0.0.1:4003", "_cancel")
