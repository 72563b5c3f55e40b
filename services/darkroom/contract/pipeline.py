"""The pipeline grammar: what an upload's ``op`` may say, its canonical text, and its limits.

The master checks a pipeline at upload and the worker runs it; both parse it here. No imaging
library is imported, so the master validates without loading Pillow. ``STEPS`` holds one rule per
step (name, syntax, one-line help, parser): the error for an unknown step, the OpenAPI
description and the README's table come from it or are tested against it.

Syntax: steps separated by commas, each ``name`` or ``name:args``, applied in order; names and
arguments are case-insensitive and blanks around a step are ignored. An empty pipeline means
``DEFAULT_PIPELINE``. At most one output format step and one ``keep-metadata`` are allowed. The
canonical text (``normalize_pipeline``) lists the operations in order, then the output format
step if one was given, then ``keep-metadata`` if it was given. ``crop`` also takes its offsets
separated by spaces: an unencoded ``+`` in a query string arrives as one. A ``watermark``'s
TEXT keeps its case; it cannot hold the separators (see ``WATERMARK_TEXT_CHARS``).

``preset:NAME`` is a rule of its own: it stands for the whole op, and the master replaces it by
the pipeline text kept in the registry under ``preset.NAME`` before parsing (``preset_name``,
``preset_key``). The parser refuses it as a step, so a preset cannot sit among other steps nor
name another preset.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from darkroom.contract.limits import MAX_PIPELINE_CHARS

DEFAULT_PIPELINE = "swap"
MAX_STEPS = 10
MAX_DIMENSION = 10_000  # the largest width, height or thumbnail size a step may ask for
QUALITY_RANGE = (1, 100)
DEFAULT_JPEG_QUALITY = 85  # what ``jpeg`` without a quality means
DEFAULT_WEBP_QUALITY = 80
DEFAULT_AVIF_QUALITY = 75  # libavif's own default through Pillow; about JPEG 85's look
BLUR_RADIUS_HUNDREDTHS = (10, 5_000)  # 0.1..50
ROTATE_HUNDREDTHS = (-36_000, 36_000)  # -360..360
WATERMARK_TEXT_CHARS = 40  # the longest watermark text
WATERMARK_OPACITY_HUNDREDTHS = (1, 100)  # 0.01..1
DEFAULT_WATERMARK_OPACITY = 50  # hundredths: 0.5
WATERMARK_POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "center")


class Limits(Protocol):
    """What a pipeline is checked against; the worker's processing settings are one."""

    @property
    def max_image_pixels(self) -> int: ...

    @property
    def max_steps(self) -> int: ...


@dataclass(frozen=True)
class PipelineLimits:
    max_image_pixels: int  # the largest output a resize or thumbnail may ask for
    max_steps: int = MAX_STEPS


class InvalidPipeline(ValueError):
    """The pipeline text is wrong; the message names the step and the problem."""


# ---------------------------------------------------------------------------------------------
# Parsed steps: plain values; the worker maps each operation to what it does to pixels.


@dataclass(frozen=True)
class Swap:
    text = "swap"


@dataclass(frozen=True)
class Grayscale:
    text = "grayscale"


@dataclass(frozen=True)
class Resize:
    width: int
    height: int
    fill: bool = False
    smart: bool = False  # with fill: the crop window chosen by content, not the centre

    @property
    def text(self) -> str:
        mode = ":smart" if self.smart else ":fill" if self.fill else ""
        return f"resize:{self.width}x{self.height}{mode}"


@dataclass(frozen=True)
class Thumbnail:
    size: int

    @property
    def text(self) -> str:
        return f"thumbnail:{self.size}"


@dataclass(frozen=True)
class Crop:
    width: int
    height: int
    x: int
    y: int

    @property
    def text(self) -> str:
        return f"crop:{self.width}x{self.height}+{self.x}+{self.y}"


@dataclass(frozen=True)
class Rotate:
    hundredths: int  # clockwise, 0 <= hundredths < 36000; exact, so the text round-trips

    @property
    def text(self) -> str:
        return f"rotate:{_decimal_text(self.hundredths)}"


@dataclass(frozen=True)
class Flip:
    text = "flip"


@dataclass(frozen=True)
class Flop:
    text = "flop"


@dataclass(frozen=True)
class Blur:
    hundredths: int

    @property
    def text(self) -> str:
        return f"blur:{_decimal_text(self.hundredths)}"


@dataclass(frozen=True)
class Sharpen:
    text = "sharpen"


@dataclass(frozen=True)
class Watermark:
    label: str  # as written, case kept
    position: str = WATERMARK_POSITIONS[0]
    opacity_hundredths: int = DEFAULT_WATERMARK_OPACITY

    @property
    def text(self) -> str:
        return f"watermark:{self.label}:{self.position}:{_decimal_text(self.opacity_hundredths)}"


Operation = (
    Swap | Grayscale | Resize | Thumbnail | Crop | Rotate | Flip | Flop | Blur | Sharpen | Watermark
)

FormatName = Literal["png", "jpeg", "webp", "avif"]
MEDIA_TYPES: dict[FormatName, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "avif": "image/avif",
}


@dataclass(frozen=True)
class OutputFormat:
    name: FormatName
    quality: int | None = None  # None: the format's default

    @property
    def text(self) -> str:
        return self.name if self.quality is None else f"{self.name}:{self.quality}"

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.name]


@dataclass(frozen=True)
class KeepMetadata:
    """The ``keep-metadata`` step: not an operation on pixels, a choice of what to write."""

    text = "keep-metadata"


Step = Operation | OutputFormat | KeepMetadata


@dataclass(frozen=True)
class Pipeline:
    operations: tuple[Operation, ...]
    output: OutputFormat | None = None  # None: PNG
    keep_metadata: bool = False  # EXIF and XMP written to the output

    @property
    def text(self) -> str:
        steps = [op.text for op in self.operations]
        steps += [self.output.text] if self.output else []
        steps += [KeepMetadata.text] if self.keep_metadata else []
        return ",".join(steps)

    @property
    def output_format(self) -> OutputFormat:
        return self.output or OutputFormat("png")


# ---------------------------------------------------------------------------------------------
# Parsing


class _ArgError(Exception):
    """A step's arguments are wrong; the parser adds which step."""


def parse_pipeline(text: str | None, limits: Limits) -> Pipeline:
    """Parse and validate pipeline text; None or blank means DEFAULT_PIPELINE."""
    text = (text or "").strip() or DEFAULT_PIPELINE
    if len(text) > MAX_PIPELINE_CHARS:
        raise InvalidPipeline(f"pipeline is longer than {MAX_PIPELINE_CHARS} characters")
    raw_steps = text.split(",")
    if len(raw_steps) > limits.max_steps:
        raise InvalidPipeline(f"too many steps: {len(raw_steps)} (at most {limits.max_steps})")
    operations: list[Operation] = []
    output: tuple[int, OutputFormat] | None = None
    keep_metadata: int | None = None  # the step number that asked
    for number, raw in enumerate(raw_steps, start=1):
        after_watermark = bool(operations) and isinstance(operations[-1], Watermark)
        step = _parse_step(number, raw, limits, _COMMA_IN_WATERMARK if after_watermark else "")
        if isinstance(step, KeepMetadata):
            if keep_metadata is not None:
                raise _step_error(
                    number, raw, f"only one {step.text} (already step {keep_metadata})"
                )
            keep_metadata = number
        elif not isinstance(step, OutputFormat):
            operations.append(step)
        elif output is None:
            output = (number, step)
        else:
            raise _step_error(number, raw, f"only one output format (already step {output[0]})")
    return Pipeline(
        tuple(operations), output[1] if output else None, keep_metadata=keep_metadata is not None
    )


def normalize_pipeline(text: str | None, limits: Limits) -> str:
    """The canonical text of a pipeline, as stored in the task record."""
    return parse_pipeline(text, limits).text


PRESET_STEP = "preset"
PRESET_NAME = re.compile(r"[a-z0-9][-_a-z0-9]{0,63}")


def preset_name(text: str | None) -> str | None:
    """The preset's name when the op is ``preset:NAME`` (alone), else None.

    Raises InvalidPipeline when the op is a preset step with a name no preset can have.
    """
    step, colon, name = (text or "").strip().lower().partition(":")
    if step != PRESET_STEP or "," in name:
        return None
    if not colon or not PRESET_NAME.fullmatch(name):
        raise InvalidPipeline(
            f"preset name {name!r}: expected letters, digits, '-' and '_', at most 64"
        )
    return name


def preset_key(name: str) -> str:
    """The registry key holding the preset's pipeline text."""
    return f"{PRESET_STEP}.{name}"


# Said when the step after a watermark is unknown: most likely its TEXT held a comma.
_COMMA_IN_WATERMARK = "; a comma ends a step, so a watermark's TEXT cannot hold one"


def _parse_step(number: int, raw: str, limits: Limits, unknown_hint: str = "") -> Step:
    name, colon, args = raw.strip().partition(":")
    if not name:
        raise _step_error(number, raw, "empty step")
    rule = _RULES.get(name.lower())
    if rule is None:
        known = ", ".join(_RULES)
        raise _step_error(number, raw, f"unknown operation (known: {known}){unknown_hint}")
    try:
        return rule.parse((args if rule.keeps_case else args.lower()) if colon else None, limits)
    except _ArgError as exc:
        raise _step_error(number, raw, str(exc)) from None


def _step_error(number: int, raw: str, problem: str) -> InvalidPipeline:
    shown = raw.strip()
    shown = shown if len(shown) <= 40 else shown[:40] + "…"
    return InvalidPipeline(f"step {number} {shown!r}: {problem}")


_StepParser = Callable[[str | None, Limits], Step]


def _no_args(make: Callable[[], Step]) -> _StepParser:
    def parse(args: str | None, limits: Limits) -> Step:
        if args is not None:
            raise _ArgError("takes no arguments")
        return make()

    return parse


def _parse_preset(args: str | None, limits: Limits) -> Step:
    raise _ArgError("a preset is the whole op (op=preset:NAME), not a step among others")


_RESIZE = re.compile(r"([^x:]*)x([^x:]*)(?::(fit|fill|smart))?")
# The offsets' "+" may arrive as a space (a query string's "+" decoded); nothing else has one.
_CROP = re.compile(r"([^x+]*)x([^x+ ]*)(?:[+ ]([^+ ]*)[+ ]([^+ ]*))?")


def _parse_resize(args: str | None, limits: Limits) -> Step:
    match = _RESIZE.fullmatch(args or "")
    if not match:
        raise _ArgError("expected WxH or WxH:fill or WxH:smart")
    width, height = _dimension(match[1], "width"), _dimension(match[2], "height")
    _check_output_pixels(width, height, limits)
    smart = match[3] == "smart"
    return Resize(width, height, fill=smart or match[3] == "fill", smart=smart)


def _parse_thumbnail(args: str | None, limits: Limits) -> Step:
    size = _dimension(args or "", "size")
    _check_output_pixels(size, size, limits)
    return Thumbnail(size)


def _parse_crop(args: str | None, limits: Limits) -> Step:
    match = _CROP.fullmatch(args or "")
    if not match:
        raise _ArgError("expected WxH+X+Y")
    longest_side = limits.max_image_pixels - 1  # no image side can be longer than this
    return Crop(
        _dimension(match[1], "width"),
        _dimension(match[2], "height"),
        _integer(match[3] or "0", "x offset", 0, longest_side),
        _integer(match[4] or "0", "y offset", 0, longest_side),
    )


def _parse_rotate(args: str | None, limits: Limits) -> Step:
    return Rotate(_hundredths(args or "", "angle", *ROTATE_HUNDREDTHS) % 36_000)


def _parse_blur(args: str | None, limits: Limits) -> Step:
    return Blur(_hundredths(args or "", "radius", *BLUR_RADIUS_HUNDREDTHS))


def _parse_watermark(args: str | None, limits: Limits) -> Step:
    label, _, rest = (args or "").partition(":")
    label = label.strip()
    if not label or len(label) > WATERMARK_TEXT_CHARS or not label.isprintable():
        raise _ArgError(
            f"TEXT must be 1..{WATERMARK_TEXT_CHARS} printable characters, "
            "without a comma or colon (they separate steps and arguments)"
        )
    position_text, colon, opacity_text = rest.partition(":")
    position = position_text.strip().lower() or WATERMARK_POSITIONS[0]
    if position not in WATERMARK_POSITIONS:
        raise _ArgError(f"position must be one of {', '.join(WATERMARK_POSITIONS)}")
    opacity = DEFAULT_WATERMARK_OPACITY
    if colon:
        opacity = _hundredths(opacity_text.strip(), "opacity", *WATERMARK_OPACITY_HUNDREDTHS)
    return Watermark(label, position, opacity)


def _quality_format(name: FormatName) -> _StepParser:
    def parse(args: str | None, limits: Limits) -> Step:
        quality = None if args is None else _integer(args, "quality", *QUALITY_RANGE)
        return OutputFormat(name, quality)

    return parse


def _dimension(text: str, what: str) -> int:
    return _integer(text, what, 1, MAX_DIMENSION)


def _integer(text: str, what: str, low: int, high: int) -> int:
    # ASCII digits only: int() would also accept "٣" and "1_000".
    if not re.fullmatch(r"[0-9]{1,12}", text) or not low <= int(text) <= high:
        raise _ArgError(f"{what} must be {low}..{high}")
    return int(text)


def _hundredths(text: str, what: str, low: int, high: int) -> int:
    """A decimal with at most two decimals, as an exact count of hundredths."""
    match = re.fullmatch(r"(-?)([0-9]{1,6})(?:\.([0-9]{1,2}))?", text)
    value = None
    if match:
        value = int(match[2]) * 100 + int((match[3] or "0").ljust(2, "0"))
        value = -value if match[1] else value
    if value is None or not low <= value <= high:
        raise _ArgError(f"{what} must be {_decimal_range(low, high)} with at most two decimals")
    return value


def _decimal_text(hundredths: int) -> str:
    sign = "-" if hundredths < 0 else ""
    whole, fraction = divmod(abs(hundredths), 100)
    return f"{sign}{whole}" + (f".{fraction:02d}".rstrip("0") if fraction else "")


def _decimal_range(low: int, high: int) -> str:
    return f"{_decimal_text(low)}..{_decimal_text(high)}"


def _check_output_pixels(width: int, height: int, limits: Limits) -> None:
    if width * height > limits.max_image_pixels:
        raise _ArgError(
            f"output of {width * height} pixels exceeds the limit of {limits.max_image_pixels}"
        )


# ---------------------------------------------------------------------------------------------
# The steps: one rule each, in the order the documentation lists them


@dataclass(frozen=True)
class StepRule:
    name: str
    syntax: str  # as the documentation writes it: placeholders in capitals, [optional]
    help: str  # one line, plain text
    parse: _StepParser
    keeps_case: bool = False  # the arguments reach ``parse`` as written, not lowercased


_QUALITIES = f"quality {QUALITY_RANGE[0]}..{QUALITY_RANGE[1]}"

STEPS: tuple[StepRule, ...] = (
    StepRule("swap", "swap", "exchanges the red and green channels (alpha kept)", _no_args(Swap)),
    StepRule(
        "grayscale", "grayscale", "makes the image grey (luma), alpha kept", _no_args(Grayscale)
    ),
    StepRule(
        "resize",
        "resize:WxH[:MODE]",
        "fits inside W x H keeping the aspect ratio (may enlarge); MODE fill covers W x H "
        "and crops the centre, MODE smart covers W x H and crops where the detail (edges) is",
        _parse_resize,
    ),
    StepRule(
        "thumbnail", "thumbnail:N", "shrinks to fit inside N x N, never enlarges", _parse_thumbnail
    ),
    StepRule(
        "crop",
        "crop:WxH+X+Y",
        "keeps the W x H rectangle whose top-left corner is (X, Y), +0+0 if not given; "
        "it must lie inside the image",
        _parse_crop,
    ),
    StepRule(
        "rotate",
        "rotate:DEG",
        f"turns clockwise, {_decimal_range(*ROTATE_HUNDREDTHS)} with at most two decimals; "
        "angles other than 90, 180, 270 grow the canvas with transparent corners",
        _parse_rotate,
    ),
    StepRule("flip", "flip", "mirrors vertically (upside down)", _no_args(Flip)),
    StepRule("flop", "flop", "mirrors horizontally", _no_args(Flop)),
    StepRule(
        "blur",
        "blur:RADIUS",
        f"Gaussian blur, radius {_decimal_range(*BLUR_RADIUS_HUNDREDTHS)} "
        "with at most two decimals",
        _parse_blur,
    ),
    StepRule("sharpen", "sharpen", "sharpens the colour channels", _no_args(Sharpen)),
    StepRule(
        "watermark",
        "watermark:TEXT[:POSITION[:OPACITY]]",
        f"writes TEXT (1..{WATERMARK_TEXT_CHARS} characters, no comma or colon, case kept) "
        "in DejaVu Sans, a tenth of the shorter side high (smaller if too wide); POSITION "
        f"{', '.join(WATERMARK_POSITIONS)} (the first if not given); OPACITY "
        f"{_decimal_range(*WATERMARK_OPACITY_HUNDREDTHS)} "
        f"({_decimal_text(DEFAULT_WATERMARK_OPACITY)} if not given)",
        _parse_watermark,
        keeps_case=True,
    ),
    StepRule("png", "png", "PNG output, the default format", _no_args(lambda: OutputFormat("png"))),
    StepRule(
        "jpeg",
        "jpeg[:Q]",
        f"JPEG output, {_QUALITIES} ({DEFAULT_JPEG_QUALITY} if not given); "
        "transparency becomes white",
        _quality_format("jpeg"),
    ),
    StepRule(
        "webp",
        "webp[:Q]",
        f"WebP output, {_QUALITIES} ({DEFAULT_WEBP_QUALITY} if not given)",
        _quality_format("webp"),
    ),
    StepRule(
        "avif",
        "avif[:Q]",
        f"AVIF output, {_QUALITIES} ({DEFAULT_AVIF_QUALITY} if not given); still images only",
        _quality_format("avif"),
    ),
    StepRule(
        "keep-metadata",
        "keep-metadata",
        "keeps the EXIF and XMP metadata, otherwise removed (the colour profile is kept "
        "either way); the EXIF orientation becomes 1, as the result is upright",
        _no_args(KeepMetadata),
    ),
    StepRule(
        PRESET_STEP,
        "preset:NAME",
        "the pipeline kept in the registry under the key preset.NAME, as the whole op; "
        "resolved by the master at upload, so /status shows the pipeline that ran",
        _parse_preset,
    ),
)
_RULES = {rule.name: rule for rule in STEPS}
