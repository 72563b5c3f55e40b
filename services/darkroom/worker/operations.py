"""Image operations: parse a pipeline, decode an image, apply the steps, encode the result.

Pure functions of their inputs: no HTTP, no global state changed per call, safe to call from
several threads at once.

Pipeline syntax: steps separated by commas, each ``name`` or ``name:args``, applied in order;
names and arguments are case-insensitive and blanks around a step are ignored. An empty
pipeline means ``DEFAULT_PIPELINE``.

===================  ==========================================================================
``swap``             swap the red and green channels: output is (G, R, B), alpha kept
``grayscale``        convert to grey (luma), alpha kept
``resize:WxH``       scale to fit inside W x H keeping the aspect ratio (may enlarge)
``resize:WxH:fill``  scale to cover W x H, then crop the centre: exactly W x H
``thumbnail:N``      shrink to fit inside N x N; never enlarges
``crop:WxH+X+Y``     the W x H rectangle whose top-left corner is (X, Y) (ImageMagick geometry);
                     ``crop:WxH`` means ``+0+0``; it must lie inside the image
``rotate:DEG``       rotate clockwise; 90, 180 and 270 are exact, other angles (at most two
                     decimals, -360..360) enlarge the canvas with transparent corners
``flip`` / ``flop``  mirror vertically / horizontally
``blur:RADIUS``      Gaussian blur, radius 0.1..50 (at most two decimals)
``sharpen``          3x3 sharpening of the colour channels
``png``              output PNG (the default)
``jpeg[:Q]``         output JPEG, quality 1..100 (default from settings); alpha becomes white
``webp[:Q]``         output WebP, quality 1..100 (default from settings)
``keep-metadata``    keep the EXIF and XMP metadata (dropped without this step); the EXIF
                     orientation becomes 1 (the image is already upright)
===================  ==========================================================================

At most one output format step and one ``keep-metadata`` are allowed. The canonical text
(``normalize_pipeline``) lists the operations in order, then the output format step if one was
given, then ``keep-metadata`` if it was given. A pipeline of only ``png`` or ``keep-metadata``
changes no pixels.

Colour handling: the EXIF orientation is applied, the ICC profile is kept while it still
describes the output's colour space. Images are worked on in one of L, LA, RGB, RGBA or I
(16-bit grey); 16-bit grey stays 16-bit in PNG output and is scaled (not clipped) to 8 bits where
a step or format needs 8 bits (``blur``, JPEG, WebP).

Metadata (EXIF, XMP, comments, text chunks) is dropped unless the pipeline has ``keep-metadata``.
Then EXIF and XMP are written to PNG (``eXIf`` chunk, XMP in an ``iTXt`` chunk), JPEG (APP1
segments) and WebP (``EXIF`` and ``XMP`` chunks). The kept EXIF says orientation 1, gives the
output's size where it gave one, and loses what described the source's encoding (strips, tiles,
compression; the embedded thumbnail, which would show the unprocessed image). Comments, PNG text
chunks, IPTC and Photoshop blocks are never kept. A JPEG segment holds at most 65533 bytes: an
image whose EXIF or XMP is larger fails with the reason when the output is JPEG.
"""

from __future__ import annotations

import io
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import BinaryIO, Literal, Protocol

from PIL import (
    ExifTags,
    Image,
    ImageCms,
    ImageFile,
    ImageFilter,
    ImageOps,
    PngImagePlugin,
    UnidentifiedImageError,
)

DEFAULT_PIPELINE = "swap"

# Decoders we trust with untrusted bytes; Image.open would otherwise try every plugin (EPS, PSD…).
INPUT_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
MAX_DIMENSION = 10_000
MAX_PIPELINE_CHARS = 1_000

# catch_warnings() swaps the process-wide filter list and is not thread-safe before Python 3.14,
# so the bomb warning is made an error once, at import (imports are serialised).
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


@dataclass(frozen=True)
class ProcessingSettings:
    max_image_pixels: int = 50_000_000  # Pillow decompression-bomb limit; also max output pixels
    png_compress_level: int = 1  # 2x faster than zlib's default 6, ~10% larger files
    jpeg_quality: int = 85  # default when the pipeline does not say
    webp_quality: int = 80
    max_steps: int = 10


class InvalidPipeline(ValueError):
    """The pipeline text is wrong; the message names the step and the problem."""


class ImageRejected(Exception):
    """The image cannot be processed; ``str(exc)`` is a reason fit to show a user."""


# ---------------------------------------------------------------------------------------------
# Operations


class Operation(Protocol):
    @property
    def text(self) -> str: ...

    def apply(self, image: Image.Image) -> Image.Image: ...


@dataclass(frozen=True)
class Swap:
    text = "swap"

    def apply(self, image: Image.Image) -> Image.Image:
        if image.mode not in ("RGB", "RGBA"):
            return image  # grey: red and green are the same channel
        bands = image.split()
        return Image.merge(image.mode, (bands[1], bands[0], *bands[2:]))


@dataclass(frozen=True)
class Grayscale:
    text = "grayscale"

    def apply(self, image: Image.Image) -> Image.Image:
        return {"RGB": image.convert("L"), "RGBA": image.convert("LA")}.get(image.mode, image)


@dataclass(frozen=True)
class Resize:
    width: int
    height: int
    fill: bool = False

    @property
    def text(self) -> str:
        return f"resize:{self.width}x{self.height}" + (":fill" if self.fill else "")

    def apply(self, image: Image.Image) -> Image.Image:
        if self.fill:
            return ImageOps.fit(image, (self.width, self.height), Image.Resampling.LANCZOS)
        return _fit_inside(image, self.width, self.height)


@dataclass(frozen=True)
class Thumbnail:
    size: int

    @property
    def text(self) -> str:
        return f"thumbnail:{self.size}"

    def apply(self, image: Image.Image) -> Image.Image:
        if image.width <= self.size and image.height <= self.size:
            return image
        return _fit_inside(image, self.size, self.size)


@dataclass(frozen=True)
class Crop:
    width: int
    height: int
    x: int
    y: int

    @property
    def text(self) -> str:
        return f"crop:{self.width}x{self.height}+{self.x}+{self.y}"

    def apply(self, image: Image.Image) -> Image.Image:
        right, bottom = self.x + self.width, self.y + self.height
        if right > image.width or bottom > image.height:
            raise ImageRejected(f"{self.text} lies outside the {image.width}x{image.height} image")
        return image.crop((self.x, self.y, right, bottom))


# Clockwise quarter turns; Pillow's ROTATE_90 is anticlockwise.
_QUARTER_TURNS = {
    9000: Image.Transpose.ROTATE_270,
    18000: Image.Transpose.ROTATE_180,
    27000: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class Rotate:
    hundredths: int  # clockwise, 0 <= hundredths < 36000; exact, so the text round-trips

    @property
    def text(self) -> str:
        return f"rotate:{_decimal_text(self.hundredths)}"

    def apply(self, image: Image.Image) -> Image.Image:
        if self.hundredths == 0:
            return image
        if self.hundredths in _QUARTER_TURNS:
            return image.transpose(_QUARTER_TURNS[self.hundredths])
        # New corners are transparent; JPEG output then paints them white.
        if image.mode in ("L", "RGB"):
            image = image.convert(image.mode + "A")
        return image.rotate(-self.hundredths / 100, Image.Resampling.BICUBIC, expand=True)


@dataclass(frozen=True)
class Flip:
    text = "flip"

    def apply(self, image: Image.Image) -> Image.Image:
        return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)


@dataclass(frozen=True)
class Flop:
    text = "flop"

    def apply(self, image: Image.Image) -> Image.Image:
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


@dataclass(frozen=True)
class Blur:
    hundredths: int

    @property
    def text(self) -> str:
        return f"blur:{_decimal_text(self.hundredths)}"

    def apply(self, image: Image.Image) -> Image.Image:
        blur = ImageFilter.GaussianBlur(self.hundredths / 100)
        if image.mode == "I":
            image = _sixteen_to_eight(image)  # Pillow cannot blur 32-bit integer images
        # Blur premultiplied colour, else transparent pixels' colour bleeds into the edges.
        premultiplied = {"RGBA": "RGBa", "LA": "La"}.get(image.mode)
        if premultiplied is None:
            return image.filter(blur)
        return image.convert(premultiplied).filter(blur).convert(image.mode)


@dataclass(frozen=True)
class Sharpen:
    text = "sharpen"

    def apply(self, image: Image.Image) -> Image.Image:
        if image.mode not in ("LA", "RGBA"):
            return image.filter(ImageFilter.SHARPEN)
        # Sharpening alpha would add halos to the outline; sharpen the colour only.
        colour = image.convert(image.mode[:-1]).filter(ImageFilter.SHARPEN)
        colour.putalpha(image.getchannel("A"))
        return colour


def _fit_inside(image: Image.Image, width: int, height: int) -> Image.Image:
    # ImageOps.contain can round a side to 0 for very thin images.
    scale = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


# ---------------------------------------------------------------------------------------------
# Output formats

FormatName = Literal["png", "jpeg", "webp"]
MEDIA_TYPES: dict[FormatName, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}


@dataclass(frozen=True)
class OutputFormat:
    name: FormatName
    quality: int | None = None  # None: the settings' default

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


Step = Operation | OutputFormat | KeepMetadata
_StepParser = Callable[[str | None, ProcessingSettings], Step]


def parse_pipeline(text: str | None, settings: ProcessingSettings) -> Pipeline:
    """Parse and validate pipeline text; None or blank means DEFAULT_PIPELINE."""
    text = (text or "").strip() or DEFAULT_PIPELINE
    if len(text) > MAX_PIPELINE_CHARS:
        raise InvalidPipeline(f"pipeline is longer than {MAX_PIPELINE_CHARS} characters")
    raw_steps = text.split(",")
    if len(raw_steps) > settings.max_steps:
        raise InvalidPipeline(f"too many steps: {len(raw_steps)} (at most {settings.max_steps})")
    operations: list[Operation] = []
    output: tuple[int, OutputFormat] | None = None
    keep_metadata: int | None = None  # the step number that asked
    for number, raw in enumerate(raw_steps, start=1):
        step = _parse_step(number, raw, settings)
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


def normalize_pipeline(text: str | None, settings: ProcessingSettings) -> str:
    """The canonical text of a pipeline, as stored in the task record."""
    return parse_pipeline(text, settings).text


def _parse_step(number: int, raw: str, settings: ProcessingSettings) -> Step:
    name, colon, args = raw.strip().lower().partition(":")
    if not name:
        raise _step_error(number, raw, "empty step")
    parser = _PARSERS.get(name)
    if parser is None:
        raise _step_error(number, raw, f"unknown operation (known: {', '.join(_PARSERS)})")
    try:
        return parser(args if colon else None, settings)
    except _ArgError as exc:
        raise _step_error(number, raw, str(exc)) from None


def _step_error(number: int, raw: str, problem: str) -> InvalidPipeline:
    shown = raw.strip()
    shown = shown if len(shown) <= 40 else shown[:40] + "…"
    return InvalidPipeline(f"step {number} {shown!r}: {problem}")


def _no_args(make: Callable[[], Step]) -> _StepParser:
    def parse(args: str | None, settings: ProcessingSettings) -> Step:
        if args is not None:
            raise _ArgError("takes no arguments")
        return make()

    return parse


_RESIZE = re.compile(r"([^x:]*)x([^x:]*)(?::(fit|fill))?")
_CROP = re.compile(r"([^x+]*)x([^x+]*)(?:\+([^+]*)\+([^+]*))?")


def _parse_resize(args: str | None, settings: ProcessingSettings) -> Step:
    match = _RESIZE.fullmatch(args or "")
    if not match:
        raise _ArgError("expected WxH or WxH:fill")
    width, height = _dimension(match[1], "width"), _dimension(match[2], "height")
    _check_output_pixels(width, height, settings)
    return Resize(width, height, fill=match[3] == "fill")


def _parse_thumbnail(args: str | None, settings: ProcessingSettings) -> Step:
    size = _dimension(args or "", "size")
    _check_output_pixels(size, size, settings)
    return Thumbnail(size)


def _parse_crop(args: str | None, settings: ProcessingSettings) -> Step:
    match = _CROP.fullmatch(args or "")
    if not match:
        raise _ArgError("expected WxH+X+Y")
    limit = settings.max_image_pixels - 1  # no image side can be longer than this
    return Crop(
        _dimension(match[1], "width"),
        _dimension(match[2], "height"),
        _integer(match[3] or "0", "x offset", 0, limit),
        _integer(match[4] or "0", "y offset", 0, limit),
    )


def _parse_rotate(args: str | None, settings: ProcessingSettings) -> Step:
    return Rotate(_hundredths(args or "", "angle", -36_000, 36_000) % 36_000)


def _parse_blur(args: str | None, settings: ProcessingSettings) -> Step:
    return Blur(_hundredths(args or "", "radius", 10, 5_000))


def _quality_format(name: FormatName) -> _StepParser:
    def parse(args: str | None, settings: ProcessingSettings) -> Step:
        quality = None if args is None else _integer(args, "quality", 1, 100)
        return OutputFormat(name, quality)

    return parse


_PARSERS: dict[str, _StepParser] = {
    "swap": _no_args(Swap),
    "grayscale": _no_args(Grayscale),
    "resize": _parse_resize,
    "thumbnail": _parse_thumbnail,
    "crop": _parse_crop,
    "rotate": _parse_rotate,
    "flip": _no_args(Flip),
    "flop": _no_args(Flop),
    "blur": _parse_blur,
    "sharpen": _no_args(Sharpen),
    "png": _no_args(lambda: OutputFormat("png")),
    "jpeg": _quality_format("jpeg"),
    "webp": _quality_format("webp"),
    "keep-metadata": _no_args(KeepMetadata),
}


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
        bounds = f"{_decimal_text(low)}..{_decimal_text(high)}"
        raise _ArgError(f"{what} must be {bounds} with at most two decimals")
    return value


def _decimal_text(hundredths: int) -> str:
    sign = "-" if hundredths < 0 else ""
    whole, fraction = divmod(abs(hundredths), 100)
    return f"{sign}{whole}" + (f".{fraction:02d}".rstrip("0") if fraction else "")


def _check_output_pixels(width: int, height: int, settings: ProcessingSettings) -> None:
    if width * height > settings.max_image_pixels:
        raise _ArgError(
            f"output of {width * height} pixels exceeds the limit of {settings.max_image_pixels}"
        )


# ---------------------------------------------------------------------------------------------
# Processing


def process_image(
    source: BinaryIO,
    destination: BinaryIO,
    pipeline_text: str | None,
    settings: ProcessingSettings,
    timings: dict[str, float] | None = None,
) -> str:
    """Decode ``source``, apply the pipeline, encode to ``destination``; return the media type.

    Raises ImageRejected for anything wrong with the image or, since no retry can fix it either,
    with the pipeline. Errors writing to ``destination`` propagate unchanged. When ``timings``
    is given, the seconds spent in ``decode``, ``operation`` and ``encode`` are stored in it.
    """
    timings = {} if timings is None else timings
    try:
        pipeline = parse_pipeline(pipeline_text, settings)
    except InvalidPipeline as exc:
        raise ImageRejected(f"invalid pipeline: {exc}") from exc
    started = time.perf_counter()
    image, metadata = _decode(source, settings)
    decoded = time.perf_counter()
    timings["decode"] = decoded - started
    for operation in pipeline.operations:
        image = operation.apply(image)
        _check_result_pixels(image, operation, settings)
    operated = time.perf_counter()
    timings["operation"] = operated - decoded
    output = pipeline.output_format
    kept = metadata if pipeline.keep_metadata else replace(metadata, exif=None, xmp=None)
    _encode(image, kept, output, destination, settings)
    timings["encode"] = time.perf_counter() - operated
    return output.media_type


@dataclass(frozen=True)
class Metadata:
    """What of the source's metadata may reach the output."""

    icc: bytes | None = None
    exif: Image.Exif | None = None  # orientation already applied (and removed)
    xmp: bytes | None = None


def _decode(source: BinaryIO, settings: ProcessingSettings) -> tuple[Image.Image, Metadata]:
    """The first frame, upright, in a working mode, with its metadata."""
    # A truncated image must fail, not come out half grey; only a global switch controls this.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        # No `with`: closing the image would discard the pixels; the caller owns `source`.
        image = Image.open(source, formats=INPUT_FORMATS)
        _check_source_pixels(image.size, settings)  # before load(): nothing is decoded yet
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # also drops the orientation from XMP
        exif = image.getexif()  # parsed (and cached) by exif_transpose already
        xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
        working, icc = _to_working_mode(image, image.info.get("icc_profile"))
        xmp_bytes = xmp.encode() if isinstance(xmp, str) else xmp
        return working, Metadata(icc, exif or None, xmp_bytes or None)
    except (ImageRejected, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"image is too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("not a supported image (PNG, JPEG, GIF, WebP, BMP or TIFF)") from exc
    except Exception as exc:  # any decoder failure is the image's fault
        raise ImageRejected(f"cannot decode the image: {exc}") from exc


def _check_source_pixels(size: tuple[int, int], settings: ProcessingSettings) -> None:
    width, height = size
    if width * height > settings.max_image_pixels:
        raise ImageRejected(
            f"image is {width}x{height} ({width * height} pixels), "
            f"more than the limit of {settings.max_image_pixels} pixels"
        )


def _check_result_pixels(
    image: Image.Image, operation: Operation, settings: ProcessingSettings
) -> None:
    if image.width * image.height > settings.max_image_pixels:
        raise ImageRejected(
            f"{operation.text} makes a {image.width}x{image.height} image, "
            f"more than the limit of {settings.max_image_pixels} pixels"
        )


_WORKING_MODES = {"L", "LA", "RGB", "RGBA", "I"}
_SIMPLE_CONVERSIONS = {
    "1": "L",
    "La": "LA",
    "PA": "RGBA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "YCbCr": "RGB",
    "I;16": "I",
    "I;16L": "I",
    "I;16B": "I",
    "I;16N": "I",
}


def _to_working_mode(image: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    mode = image.mode
    if mode in _WORKING_MODES:
        return image, icc
    if mode in _SIMPLE_CONVERSIONS:
        return image.convert(_SIMPLE_CONVERSIONS[mode]), icc
    if mode == "P":
        return image.convert("RGBA" if image.has_transparency_data else "RGB"), icc
    if mode == "F":
        return _stretch_float(image), icc
    if mode in ("CMYK", "LAB"):
        return _to_srgb(image, icc), None
    raise ImageRejected(f"unsupported colour mode {mode}")


def _stretch_float(image: Image.Image) -> Image.Image:
    # Floating-point data has no fixed range: stretch its own range over 16-bit grey.
    low, high = image.getextrema()
    scale = 65535 / (high - low) if high > low else 0
    return image.point(lambda value: (value - low) * scale).convert("I")


def _to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """CMYK or Lab to RGB, through the embedded profile when there is a usable one."""
    if icc:
        try:
            source_profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(
                image, source_profile, _srgb_profile(), outputMode="RGB"
            )
            if converted is not None:
                return converted
        except ImageCms.PyCMSError:
            pass  # a broken profile: fall back to the plain conversion
    return image.convert("RGB")


@lru_cache(maxsize=1)
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _sixteen_to_eight(image: Image.Image) -> Image.Image:
    # convert("L") clips everything above 255 to white: scale 0..65535 onto 0..255 first.
    return image.point(lambda value: value / 257).convert("L")


# ---------------------------------------------------------------------------------------------
# Encoding

# The colour space an ICC profile describes, from its header, per output mode.
_ICC_SPACES = {"L": b"GRAY", "LA": b"GRAY", "I;16": b"GRAY", "RGB": b"RGB ", "RGBA": b"RGB "}


def _encode(
    image: Image.Image,
    metadata: Metadata,
    output: OutputFormat,
    destination: BinaryIO,
    settings: ProcessingSettings,
) -> None:
    """Write ``image``; ``metadata`` holds only what is to be kept (EXIF and XMP when asked)."""
    image = _for_format(image, output.name)
    image.info = {}  # savers copy some metadata (comments, text) from info by default
    options: dict[str, object] = {}
    icc = metadata.icc
    if icc and icc[16:20] == _ICC_SPACES.get(image.mode):
        options["icc_profile"] = icc  # a grey profile on colour pixels (or back) would be wrong
    options.update(_metadata_options(metadata, image.size, output.name))
    if output.name == "png":
        options["compress_level"] = settings.png_compress_level
    elif output.name == "jpeg":
        options["quality"] = output.quality or settings.jpeg_quality
    else:
        options["quality"] = output.quality or settings.webp_quality
    image.save(destination, format=output.name.upper(), **options)


# TIFF tags that describe how the source's pixels were stored, not the photo: a TIFF source's
# EXIF is its whole first directory. XMP and ICC travel on their own; IPTC and Photoshop blocks
# are not kept.
_ENCODING_TAG_NAMES = """
    NewSubfileType SubfileType ImageWidth ImageLength BitsPerSample Compression
    PhotometricInterpretation Thresholding CellWidth CellLength FillOrder StripOffsets
    SamplesPerPixel RowsPerStrip StripByteCounts MinSampleValue MaxSampleValue PlanarConfiguration
    FreeOffsets FreeByteCounts GrayResponseUnit GrayResponseCurve T4Options T6Options Predictor
    ColorMap TileWidth TileLength TileOffsets TileByteCounts SubIFDs InkSet ExtraSamples
    SampleFormat SMinSampleValue SMaxSampleValue JPEGTables JPEGProc JpegIFOffset JpegIFByteCount
    YCbCrCoefficients YCbCrSubSampling YCbCrPositioning ReferenceBlackWhite
    XMLPacket IPTCNAA ImageResources InterColorProfile
"""
_ENCODING_TAGS = frozenset(int(ExifTags.Base[name]) for name in _ENCODING_TAG_NAMES.split())
# One JPEG segment holds 65533 bytes: EXIF with its "Exif\0\0" header, XMP after its namespace.
_JPEG_MAX_EXIF_BYTES = 65_533
_JPEG_MAX_XMP_BYTES = 65_533 - len(b"http://ns.adobe.com/xap/1.0/\x00")
_PNG_XMP_KEY = "XML:com.adobe.xmp"  # the iTXt keyword XMP readers look for


def _metadata_options(
    metadata: Metadata, size: tuple[int, int], name: FormatName
) -> dict[str, object]:
    """The save options that write the kept EXIF and XMP in format ``name``."""
    options: dict[str, object] = {}
    exif = _exif_bytes(metadata.exif, size) if metadata.exif is not None else None
    if exif:
        if name == "jpeg" and len(exif) > _JPEG_MAX_EXIF_BYTES:
            raise ImageRejected(
                f"keep-metadata: the EXIF is {len(exif)} bytes, more than a JPEG holds "
                f"({_JPEG_MAX_EXIF_BYTES}); choose png or webp output"
            )
        options["exif"] = exif  # PNG and WebP drop the "Exif\0\0" header themselves
    if xmp := metadata.xmp:
        if name == "jpeg" and len(xmp) > _JPEG_MAX_XMP_BYTES:
            raise ImageRejected(
                f"keep-metadata: the XMP is {len(xmp)} bytes, more than a JPEG holds "
                f"({_JPEG_MAX_XMP_BYTES}); choose png or webp output"
            )
        if name == "png":
            text = PngImagePlugin.PngInfo()
            text.add_itxt(_PNG_XMP_KEY, xmp)  # type: ignore[arg-type]  # bytes are written as is
            options["pnginfo"] = text
        else:
            options["xmp"] = xmp
    return options


def _exif_bytes(source: Image.Exif, size: tuple[int, int]) -> bytes | None:
    """The EXIF to write, with orientation 1 and the output's size; None when nothing is left."""
    exif = Image.Exif()
    try:
        for tag, value in source.items():
            if tag not in _ENCODING_TAGS and tag not in (ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo):
                exif[tag] = value
        for pointer in (ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo):
            if directory := dict(source.get_ifd(pointer)):
                exif[pointer] = directory
        if not exif:
            return None
        if isinstance(sub := exif.get(ExifTags.IFD.Exif), dict):
            if ExifTags.IFD.Interop in sub:  # an offset into the source: copy the directory
                if interop := dict(source.get_ifd(ExifTags.IFD.Interop)):
                    sub[ExifTags.IFD.Interop] = interop
                else:
                    del sub[ExifTags.IFD.Interop]
            width, height = size
            if ExifTags.Base.ExifImageWidth in sub:
                sub[ExifTags.Base.ExifImageWidth] = width
            if ExifTags.Base.ExifImageHeight in sub:
                sub[ExifTags.Base.ExifImageHeight] = height
        exif[ExifTags.Base.Orientation] = 1  # the pixels are upright now
        return exif.tobytes()
    except MemoryError:
        raise
    except Exception as exc:  # a malformed directory in the source
        raise ImageRejected(f"keep-metadata: the EXIF cannot be written: {exc}") from exc


def _for_format(image: Image.Image, name: FormatName) -> Image.Image:
    if image.mode == "I":
        # PNG keeps 16 bits (values clamped to its range); the others take 8.
        image = image.convert("I;16") if name == "png" else _sixteen_to_eight(image)
    if name == "jpeg" and image.mode in ("LA", "RGBA"):
        return _on_white(image)
    if name == "webp" and image.mode in ("L", "LA"):
        return image.convert("RGB" if image.mode == "L" else "RGBA")
    return image


def _on_white(image: Image.Image) -> Image.Image:
    colour_mode = image.mode[:-1]
    background = Image.new(colour_mode, image.size, (255,) * len(colour_mode))
    background.paste(image.convert(colour_mode), mask=image.getchannel("A"))
    return background
