"""16-bit colour: what Pillow has no image mode for, kept as one 16-bit band per channel.

Pillow decodes a 16-bit RGB or RGBA PNG or TIFF to 8 bits per channel (the samples' high bytes)
and has no 16-bit colour mode to work in. Decoding the file a second time with the rawmode of
the other byte order gives the low bytes. pi-heif gives a 10- or 12-bit HEIF's samples as
16-bit ones when asked (``split_samples``), and its Pillow plugin 8 bits only. ``DeepImage``
holds each channel as a mode-``I`` band (0..65535). Geometric steps (resize, thumbnail, crop,
rotate, flip, flop) run on each band with Pillow's 32-bit integer resampling; ``swap`` reorders
bands; ``grayscale`` weighs them (ITU-R 601-2, as Pillow's "L"); ``sharpen`` runs on each
colour band as on 16-bit grey (Pillow's 3x3 kernel, clipped to 16 bits). ``blur`` (Pillow's
Gaussian blur takes 8-bit bands only), ``watermark`` and every output format but PNG take the
image reduced to 8 bits, as does grayscale with alpha. PNG output keeps 16 bits (written here:
Pillow cannot). Working memory: 12 to 16 bytes a pixel.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from PIL import Image, ImageMath

from darkroom.contract.pipeline import Blur, Grayscale, Rotate, Sharpen, Swap, Watermark

# Pillow's rawmodes for 16-bit colour, and the ones that read the same samples' low bytes.
_LOW_BYTES_RAWMODES = {
    "RGB;16B": "RGB;16L",
    "RGB;16L": "RGB;16B",
    "RGBA;16B": "RGBA;16L",
    "RGBA;16L": "RGBA;16B",
}
_DEEP_FORMATS = ("PNG", "TIFF")
_TOP = 65535


@dataclass(frozen=True)
class DeepImage:
    """A 16-bit colour image: ``mode`` "RGB" or "RGBA", one mode-I band per channel."""

    mode: str
    bands: tuple[Image.Image, ...]

    @property
    def size(self) -> tuple[int, int]:
        return self.bands[0].size

    @property
    def width(self) -> int:
        return self.bands[0].width

    @property
    def height(self) -> int:
        return self.bands[0].height

    def with_bands(self, transform: Callable[[Image.Image], Image.Image]) -> DeepImage:
        return DeepImage(self.mode, tuple(transform(band) for band in self.bands))

    def to_eight(self) -> Image.Image:
        """The same image at 8 bits per channel, scaled rather than clipped."""
        return Image.merge(self.mode, [sixteen_to_eight(band) for band in self.bands])


def sixteen_to_eight(image: Image.Image) -> Image.Image:
    """16-bit grey (mode I) as 8-bit grey, scaled rather than clipped."""
    # convert("L") clips everything above 255 to white: scale 0..65535 onto 0..255 first.
    return image.point(lambda value: value / 257).convert("L")


def low_bytes_rawmode(file: Image.Image) -> str | None:
    """The rawmode that decodes the low bytes of ``file`` (opened, not loaded) when it holds
    16-bit colour; None otherwise."""
    if file.format not in _DEEP_FORMATS or len(file.tile) == 0:
        return None
    rawmodes = {_rawmode(tile.args) for tile in file.tile}
    if len(rawmodes) != 1:
        return None
    return _LOW_BYTES_RAWMODES.get(rawmodes.pop())  # type: ignore[arg-type]


def _rawmode(args: object) -> object:
    # PNG tiles give the rawmode alone; TIFF tiles a tuple that starts with it.
    return args[0] if isinstance(args, tuple) and args else args


def with_rawmode(tiles: list[Any], rawmode: str) -> list[Any]:
    """``tiles`` (of a reopened file) decoding their samples with ``rawmode`` instead."""
    return [
        tile._replace(args=(rawmode, *tile.args[1:]) if isinstance(tile.args, tuple) else rawmode)
        for tile in tiles
    ]


def from_bytes(
    high: Image.Image, low: Image.Image, key: object = None, bits: int = 16
) -> DeepImage:
    """A DeepImage from two 8-bit decodes of one file: its samples' high bytes and low bytes.

    ``key`` is a tRNS key colour (16-bit red, green, blue): pixels of exactly that colour
    become transparent. ``bits`` below 16: the samples hold that many bits in their high bits
    (a 10- or 12-bit HEIF's); they are stretched to 0..65535, so that the brightest is white.
    """
    scale = _TOP / (_TOP - ((1 << (16 - bits)) - 1))

    def combined(ops: dict[str, Any]) -> Any:
        sample = ops["high"] * 256 + ops["low"]
        return sample if bits == 16 else ops["int"](sample * scale + 0.5)

    bands = tuple(
        ImageMath.lambda_eval(combined, high=hi, low=lo)
        for hi, lo in zip(high.split(), low.split(), strict=True)
    )
    if high.mode == "RGB" and isinstance(key, tuple) and len(key) == 3:
        differs = [
            ImageMath.lambda_eval(lambda ops, k=k: ops["notequal"](ops["band"], k), band=band)
            for band, k in zip(bands, key, strict=True)
        ]
        opaque = ImageMath.lambda_eval(
            lambda ops: (ops["r"] | ops["g"] | ops["b"]) * _TOP,
            r=differs[0],
            g=differs[1],
            b=differs[2],
        )
        return DeepImage("RGBA", (*bands, opaque))
    return DeepImage(high.mode, bands)


def split_samples(
    mode: str, size: tuple[int, int], data: bytes, stride: int
) -> tuple[Image.Image, Image.Image]:
    """The high and the low bytes of interleaved little-endian 16-bit samples (``mode`` "RGB"
    or "RGBA"), as pi-heif gives a 10- or 12-bit HEIF, each as an 8-bit image."""
    return (
        Image.frombytes(mode, size, data, "raw", f"{mode};16L", stride),
        Image.frombytes(mode, size, data, "raw", f"{mode};16B", stride),
    )


def apply(
    operation: Any, image: DeepImage, per_band: Callable[[Any, Image.Image], Image.Image]
) -> DeepImage | Image.Image:
    """What ``operation`` makes of ``image``; ``per_band`` applies a geometric step to a band."""
    if isinstance(operation, Swap):
        red, green, *rest = image.bands
        return DeepImage(image.mode, (green, red, *rest))
    if isinstance(operation, Grayscale):
        red, green, blue, *alpha = image.bands
        grey = ImageMath.lambda_eval(
            lambda ops: (ops["r"] * 299 + ops["g"] * 587 + ops["b"] * 114 + 500) / 1000,
            r=red,
            g=green,
            b=blue,
        ).convert("I")
        if not alpha:
            return grey  # 16-bit grey is a working mode of its own
        # 16-bit grey with alpha is not: 8 bits.
        return Image.merge("LA", (sixteen_to_eight(grey), sixteen_to_eight(alpha[0])))
    if isinstance(operation, Sharpen):
        # each colour band as 16-bit grey is; alpha as it was (sharpened, it adds halos)
        colour, alpha = image.bands[:3], image.bands[3:]
        return DeepImage(image.mode, (*(per_band(operation, band) for band in colour), *alpha))
    if isinstance(operation, Blur | Watermark):  # drawn at 8 bits
        return per_band(operation, image.to_eight())
    if isinstance(operation, Rotate) and operation.hundredths % 9000 and image.mode == "RGB":
        # The new corners are transparent: give the image an opaque alpha band first.
        image = DeepImage("RGBA", (*image.bands, Image.new("I", image.size, _TOP)))
    return image.with_bands(lambda band: per_band(operation, band))


def clipped(band: Image.Image) -> Image.Image:
    """A mode-I image with its samples clipped to 0..65535 (still mode I): a filter's
    overshoot, which later steps must not see (8-bit images clip at every step)."""
    return ImageMath.lambda_eval(
        lambda ops: ops["min"](ops["max"](ops["band"], 0), _TOP), band=band
    )


def write_png(
    image: DeepImage,
    destination: BinaryIO,
    compress_level: int,
    chunks: list[tuple[bytes, bytes]],
) -> None:
    """Write a 16-bit RGB or RGBA PNG; ``chunks`` (type, data) go before the pixels."""
    width, height = image.size
    count = len(image.bands)
    samples = bytearray(width * height * count * 2)
    for index, band in enumerate(image.bands):
        big_endian = band.convert("I;16B").tobytes()  # clamps to 0..65535
        samples[2 * index :: 2 * count] = big_endian[0::2]
        samples[2 * index + 1 :: 2 * count] = big_endian[1::2]
    row = width * count * 2
    compressor = zlib.compressobj(compress_level)
    data = [compressor.compress(b"\x00" + samples[y * row : (y + 1) * row]) for y in range(height)]
    data.append(compressor.flush())
    colour_type = 6 if image.mode == "RGBA" else 2
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    destination.write(b"\x89PNG\r\n\x1a\n")
    for kind, body in [(b"IHDR", header), *chunks, (b"IDAT", b"".join(data)), (b"IEND", b"")]:
        destination.write(struct.pack(">I", len(body)) + kind + body)
        destination.write(struct.pack(">I", zlib.crc32(kind + body)))


def png_metadata_chunks(
    icc: bytes | None, exif: bytes | None, xmp: bytes | None
) -> list[tuple[bytes, bytes]]:
    """The iCCP, eXIf and XMP iTXt chunks Pillow's PNG writer would write for these."""
    chunks = []
    if icc:
        chunks.append((b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc)))
    if exif:
        chunks.append((b"eXIf", exif.removeprefix(b"Exif\x00\x00")))
    if xmp:
        chunks.append((b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp))
    return chunks
