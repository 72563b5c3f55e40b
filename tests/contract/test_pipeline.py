"""Tests for darkroom.contract.pipeline: parsing, canonical text, limits, the step table."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darkroom.contract.pipeline import (
    MAX_STEPS,
    STEPS,
    InvalidPipeline,
    PipelineLimits,
    normalize_pipeline,
    parse_pipeline,
)

SETTINGS = PipelineLimits(max_image_pixels=50_000_000)
README = Path(__file__).resolve().parents[2] / "README.md"


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        (None, "swap"),
        ("", "swap"),
        (" RESIZE:0800X600:FIT , Grayscale ", "resize:800x600,grayscale"),
        ("resize:800x600:fill", "resize:800x600:fill"),
        ("jpeg,flip", "flip,jpeg"),
        ("jpeg:090", "jpeg:90"),
        ("webp", "webp"),
        ("AVIF:60", "avif:60"),
        ("png", "png"),
        ("crop:10x20", "crop:10x20+0+0"),
        ("crop:10x20+3+4", "crop:10x20+3+4"),
        ("crop:400x300 100 50", "crop:400x300+100+50"),  # "+" decoded from a query string
        ("crop:400x300+100 50", "crop:400x300+100+50"),
        ("rotate:-90", "rotate:270"),
        ("rotate:360", "rotate:0"),
        ("rotate:12.50", "rotate:12.5"),
        ("rotate:-0.05", "rotate:359.95"),
        ("blur:2.0", "blur:2"),
        ("blur:0.1", "blur:0.1"),
        ("thumbnail:128,sharpen,flop", "thumbnail:128,sharpen,flop"),
        ("keep-metadata", "keep-metadata"),
        (" Keep-Metadata , JPEG:80, flip", "flip,jpeg:80,keep-metadata"),
        ("RESIZE:300x200:Smart", "resize:300x200:smart"),
        ("watermark:Darkroom", "watermark:Darkroom:bottom-right:0.5"),
        # TEXT keeps its case and inner blanks; the position and the step name do not
        (" WaterMark: Hé © 2026 :Top-Left:0.25", "watermark:Hé © 2026:top-left:0.25"),
        ("watermark:x::1.0", "watermark:x:bottom-right:1"),
        ("watermark:a b:center", "watermark:a b:center:0.5"),
    ],
)
def test_normalize(text: str | None, canonical: str) -> None:
    assert normalize_pipeline(text, SETTINGS) == canonical


def test_parse_pipeline_separates_operations_from_output() -> None:
    pipeline = parse_pipeline("jpeg:70,flip,grayscale", SETTINGS)
    assert [op.text for op in pipeline.operations] == ["flip", "grayscale"]
    assert (pipeline.output_format.media_type, pipeline.output_format.quality) == (
        "image/jpeg",
        70,
    )
    assert not pipeline.keep_metadata
    assert parse_pipeline("keep-metadata,flip", SETTINGS).keep_metadata


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("resize:0x5", "step 1 'resize:0x5': width must be 1..10000"),
        ("swap,resize:5x10001", "step 2 'resize:5x10001': height must be 1..10000"),
        ("resize:800", "step 1 'resize:800': expected WxH or WxH:fill"),
        ("resize:8x8:cover", "step 1 'resize:8x8:cover': expected WxH or WxH:fill"),
        ("resize:٣x3", "width must be 1..10000"),
        ("resize:10000x10000", "output of 100000000 pixels exceeds the limit of 50000000"),
        ("thumbnail:abc", "step 1 'thumbnail:abc': size must be 1..10000"),
        ("thumbnail", "size must be 1..10000"),
        ("explode", "step 1 'explode': unknown operation (known: swap, grayscale,"),
        ("swap:1", "step 1 'swap:1': takes no arguments"),
        ("swap,", "step 2 '': empty step"),
        ("crop:10x10-5+5", "expected WxH+X+Y"),
        ("crop:10x10 5 5 5", "expected WxH+X+Y"),
        ("crop:10x10  5 5", "expected WxH+X+Y"),
        ("crop:0x10+5+5", "width must be 1..10000"),
        ("rotate:90deg", "angle must be -360..360 with at most two decimals"),
        ("rotate:361", "angle must be -360..360"),
        ("rotate:1.234", "angle must be -360..360"),
        ("blur:0", "radius must be 0.1..50 with at most two decimals"),
        ("blur:50.01", "radius must be 0.1..50"),
        ("jpeg:0", "step 1 'jpeg:0': quality must be 1..100"),
        ("webp:101", "quality must be 1..100"),
        ("avif:0", "quality must be 1..100"),
        ("jpeg:", "quality must be 1..100"),
        ("png,flip,jpeg", "step 3 'jpeg': only one output format (already step 1)"),
        (
            "keep-metadata,flip,KEEP-METADATA",
            "step 3 'KEEP-METADATA': only one keep-metadata (already step 1)",
        ),
        ("keep-metadata:exif", "step 1 'keep-metadata:exif': takes no arguments"),
        (
            "keep_metadata",
            "unknown operation (known: swap, grayscale, resize, thumbnail, crop, "
            "rotate, flip, flop, blur, sharpen, watermark, png, jpeg, webp, avif, keep-metadata, "
            "preset)",
        ),
        ("resize:8x8:Smarter", "expected WxH or WxH:fill or WxH:smart"),
        ("watermark", "TEXT must be 1..40 printable characters, without a comma or colon"),
        ("watermark::top-left", "TEXT must be 1..40 printable characters"),
        ("watermark:" + "x" * 41, "TEXT must be 1..40 printable characters"),
        ("watermark:a\tb", "TEXT must be 1..40 printable characters"),
        (
            "watermark:hi:middle",
            "step 1 'watermark:hi:middle': position must be one of bottom-right, bottom-left, "
            "top-right, top-left, center",
        ),
        ("watermark:hi:center:0", "opacity must be 0.01..1 with at most two decimals"),
        ("watermark:hi:center:50", "opacity must be 0.01..1 with at most two decimals"),
        ("watermark:hi:center:0.5:x", "opacity must be 0.01..1"),
        ("preset:web,png", "step 1 'preset:web': a preset is the whole op (op=preset:NAME)"),
        ("flip,preset:web", "step 2 'preset:web': a preset is the whole op"),
        ("flip," * 10 + "flop", "too many steps: 11 (at most 10)"),
        ("x" * 1001, "pipeline is longer than 1000 characters"),
    ],
)
def test_invalid_pipeline(text: str, message: str) -> None:
    with pytest.raises(InvalidPipeline) as raised:
        parse_pipeline(text, SETTINGS)
    assert message in str(raised.value)


def test_limits_come_from_the_settings() -> None:
    small = PipelineLimits(max_steps=2, max_image_pixels=100)
    with pytest.raises(InvalidPipeline, match="too many steps: 3"):
        parse_pipeline("flip,flop,swap", small)
    with pytest.raises(InvalidPipeline, match="exceeds the limit of 100"):
        parse_pipeline("thumbnail:11", small)


# --- properties ------------------------------------------------------------------------------

STEP_TEXTS = st.one_of(
    st.sampled_from(
        [
            "swap",
            "GRAYSCALE",
            "flip",
            "flop",
            "sharpen",
            " png ",
            "jpeg",
            "webp",
            "avif",
            " Keep-Metadata",
        ]
    ),
    st.builds(
        "resize:{}x{}{}".format,
        st.integers(1, 5000),
        st.integers(1, 5000),
        st.sampled_from(["", ":fill", ":fit", ":smart"]),
    ),
    st.builds("thumbnail:{}".format, st.integers(1, 5000)),
    st.builds(
        "crop:{}x{}+{}+{}".format, *[st.integers(1, 10000)] * 2, *[st.integers(0, 10**6)] * 2
    ),
    st.builds("rotate:{:.2f}".format, st.decimals(-360, 360, places=2)),
    st.builds("blur:{}".format, st.decimals("0.1", "50", places=2)),
    st.builds("jpeg:{}".format, st.integers(1, 100)),
    st.builds(
        "watermark:{}{}".format,
        st.text(st.characters(blacklist_characters=",:"), min_size=1, max_size=40),
        st.sampled_from(["", ":top-left", ":CENTER:0.3", "::1", ":bottom-left:0.05"]),
    ),
)


@given(st.text(max_size=60) | st.text(alphabet=":,x+-.0123456789resizcopjgwb", max_size=40))
@settings(max_examples=300, deadline=None)
def test_parse_raises_only_invalid_pipeline(text: str) -> None:
    with contextlib.suppress(InvalidPipeline):
        parse_pipeline(text, SETTINGS)


@given(st.lists(STEP_TEXTS, min_size=1, max_size=6))
@settings(max_examples=200, deadline=None)
def test_normalize_is_idempotent(steps: list[str]) -> None:
    text = ",".join(steps)
    try:
        canonical = normalize_pipeline(text, SETTINGS)
    except InvalidPipeline:
        return  # e.g. two format steps
    assert normalize_pipeline(canonical, SETTINGS) == canonical
    assert parse_pipeline(canonical, SETTINGS) == parse_pipeline(text, SETTINGS)


# --- the step table --------------------------------------------------------------------------


def test_every_step_has_a_one_line_help_and_a_syntax_naming_it() -> None:
    for rule in STEPS:
        assert rule.syntax.split(":")[0].split("[")[0] == rule.name
        assert rule.help and "\n" not in rule.help and "`" not in rule.help


def test_unknown_step_lists_the_table_in_order() -> None:
    with pytest.raises(InvalidPipeline) as raised:
        parse_pipeline("explode", SETTINGS)
    assert str(raised.value).endswith(f"(known: {', '.join(rule.name for rule in STEPS)})")


def readme_operations() -> tuple[str, list[tuple[str, str]]]:
    """The README's Operations section: its text and its table's (step, help) rows."""
    section = README.read_text().split("\n## Operations\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (.+) \|$", section, re.MULTILINE)
    return section, rows


def test_readme_table_is_the_step_table() -> None:
    section, rows = readme_operations()
    expected = [(rule.syntax, rule.help) for rule in STEPS]
    table = "\n".join(f"| `{syntax}` | {help} |" for syntax, help in expected)
    assert rows == expected, f"the README's Operations table should read:\n{table}"
    assert f"at most {MAX_STEPS} steps" in " ".join(section.split())
