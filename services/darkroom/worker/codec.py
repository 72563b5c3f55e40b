"""Reading and writing image files: decode, colour modes, encode, and the metadata kept.

Colour handling: the EXIF orientation is applied, the ICC profile is kept while it still
describes the output's colour space. CMYK and Lab become sRGB through their embedded profile; a
CMYK (or YCCK) JPEG or a CMYK TIFF without one through a standard FOGRA39 press profile shipped
in ``profiles/``. Images are worked on in one of L, LA, RGB, RGBA or I
(16-bit grey); 16-bit grey stays 16-bit in PNG output and is scaled (not clipped) to 8 bits where
a step or format needs 8 bits (``blur``, JPEG, WebP, AVIF).

Metadata (EXIF, XMP, comments, text chunks) is dropped unless the pipeline has ``keep-metadata``.
Then EXIF and XMP are written to PNG (``eXIf`` chunk, XMP in an ``iTXt`` chunk), JPEG (APP1
segments), WebP (``EXIF`` and ``XMP`` chunks) and AVIF (``Exif`` and ``mime`` items). The kept
EXIF says orientation 1, gives the output's size where it gave one, and loses what described
the source's encoding (strips, tiles, compression; the embedded thumbnail, which would show the
unprocessed image). Comments, PNG text chunks, IPTC and Photoshop blocks are never kept. A JPEG
segment holds at most 65533 bytes: an image whose EXIF or XMP is larger fails with the reason
when the output is JPEG.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import BinaryIO

import pi_heif
from PIL import (
    ExifTags,
    Image,
    ImageChops,
    ImageCms,
    ImageFile,
    ImageMath,
    ImageOps,
    PngImagePlugin,
    UnidentifiedImageError,
)

from darkroom.contract.pipeline import (
    DEFAULT_AVIF_QUALITY,
    DEFAULT_JPEG_QUALITY,
    DEFAULT_WEBP_QUALITY,
    MAX_STEPS,
    FormatName,
    OutputFormat,
)
from darkroom.core.config import Config
from darkroom.core.imagetypes import SNIFF_BYTES, sniff_media_type
from darkroom.worker import deep, heifboxes, pngchunks
from darkroom.worker.deep import DeepImage, sixteen_to_eight

# Decoders we trust with untrusted bytes; Image.open would otherwise try every plugin (EPS, PSD…).
# AVIF is Pillow's own (from 11.2); HEIF (HEIC) is pi-heif's, registered here without the
# thumbnails, depth and auxiliary images a phone's file carries: only the main image is used.
INPUT_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "HEIF")
pi_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

# catch_warnings() swaps the process-wide filter list and is not thread-safe before Python 3.14,
# so the bomb warning is made an error once, at import (imports are serialised).
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
# An unreadable optional PNG chunk is skipped (and reported), not a reason to refuse the image.
pngchunks.use_tolerant_png_reader()
# How a reason names a format.
_FORMAT_LABELS = {"WEBP": "WebP"}
# pi-heif registers HEIF as image/heif only; the sniffer names HEVC-coded HEIF image/heic.
_MEDIA_TYPE_ALIASES = {"image/heic": "image/heif"}


@dataclass(frozen=True)
class ProcessingSettings:
    """The worker's processing rules; ``Config.settings_for`` builds it, defaults are Config's."""

    max_image_pixels: int = Config.max_image_pixels  # decompression bombs; also output pixels
    png_compress_level: int = Config.png_compress_level
    jpeg_quality: int = DEFAULT_JPEG_QUALITY  # when the pipeline does not say
    webp_quality: int = DEFAULT_WEBP_QUALITY
    avif_quality: int = DEFAULT_AVIF_QUALITY
    max_steps: int = MAX_STEPS
    max_frames: int = 1000  # frames of an animation kept; a longer one gives its first frame


class ImageRejected(Exception):
    """The image cannot be processed; ``str(exc)`` is a reason fit to show a user."""


class AnimationUnreadable(ImageRejected):
    """An APNG's frames cannot all be read. Its still (default) image may be: the APNG
    specification asks a decoder that meets an error to show that image instead."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"cannot decode the animation: {reason}")
        self.reason = reason  # the decoder's words


@dataclass(frozen=True)
class Metadata:
    """What of the source's metadata may reach the output."""

    icc: bytes | None = None
    exif: Image.Exif | None = None  # orientation already applied (and removed)
    xmp: bytes | None = None
    # What else the file held, named for a user's report: EXIF and XMP, dropped unless the
    # pipeline keeps metadata, and what no result keeps (comments, text chunks, IPTC)
    removable: tuple[str, ...] = ()
    never_kept: tuple[str, ...] = ()

    def removed(self, keep_metadata: bool) -> tuple[str, ...]:
        """What of the file's metadata the result does not carry (the ICC profile is kept)."""
        return self.never_kept if keep_metadata else self.removable + self.never_kept


@dataclass(frozen=True)
class FrameTiming:
    """When an animation's frames show."""

    durations: tuple[int, ...]  # milliseconds each frame shows
    loop: int  # times played; 0: forever


# ---------------------------------------------------------------------------------------------
# Decoding


class SourceImage:
    """An opened image file: its header read and its size checked, no pixel decoded yet."""

    def __init__(
        self,
        file: Image.Image,
        settings: ProcessingSettings,
        source: BinaryIO | None = None,
        start: int = 0,
        *,
        default_image_only: bool = False,
    ) -> None:
        self._file, self._settings = file, settings
        self._source, self._start = source, start  # to say what is wrong if decoding fails
        # How the PNG stores its samples ("L;2", "I;16B", "RGB;16B"…), known only until loaded.
        self._png_rawmode = file.tile[0].args if file.format == "PNG" and file.tile else None
        self._png_stream = getattr(file, "png", None)
        # An APNG whose default image is not a frame shows its first frame (frame 1 to Pillow)
        # where the animation is understood, as here, unless the frames cannot be read.
        self._default_image_only = default_image_only
        self._still_is_a_frame = self.has_separate_default_image and not default_image_only
        # 16-bit colour (PNG, TIFF), which Pillow decodes to the samples' high bytes only; an
        # APNG's frames are composed at 8 bits.
        self._low_rawmode = None if self._still_is_a_frame else deep.low_bytes_rawmode(file)
        # Only JPEG decoders shrink on load, and only there is the orientation known before the
        # pixels are read (a PNG's eXIf chunk may follow them).
        self._turned = False
        self.shrinkable_size: tuple[int, int] | None = None  # upright
        if file.format == "JPEG":
            width, height = file.size
            # EXIF orientations 5 to 8 turn the picture a quarter: its upright axes swap.
            self._turned = file.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8)
            self.shrinkable_size = (height, width) if self._turned else (width, height)

    def decode(
        self, at_least: tuple[int, int] | None = None
    ) -> tuple[Image.Image | DeepImage, Metadata]:
        """The first frame (an APNG's default image only when it is one, or when
        ``reopened_for_still``), upright, in a working mode, with its metadata.

        With ``at_least`` (an upright size; only when ``shrinkable_size`` is known), a JPEG is
        shrunk on load: its DCT is decoded at 1/2, 1/4 or 1/8 scale, the smallest that keeps
        both sides at least that large.
        """
        image = self._file
        with (
            self._reading_frames() if self._still_is_a_frame else nullcontext(),
            _decoding_errors(self._settings, self._source, self._start),
        ):
            if at_least is not None:
                width, height = at_least
                image.draft(None, (height, width) if self._turned else (width, height))
            if self._still_is_a_frame:
                image.seek(1)
            image.load()
            low_bytes = self._low_bytes()
            deep_heif = self._deep_heif()
            turn = _ORIENTATION_TURNS.get(image.getexif().get(ExifTags.Base.Orientation))
            ImageOps.exif_transpose(image, in_place=True)  # also drops the orientation from XMP
            exif = image.getexif()  # parsed (and cached) by exif_transpose already
            xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
            icc = image.info.get("icc_profile")
            working: Image.Image | DeepImage
            if deep_heif is not None:
                working = deep_heif
                if turn is not None:  # FLIP_LEFT_RIGHT is 0
                    working = deep_heif.with_bands(lambda band: band.transpose(turn))
            elif low_bytes is not None:
                low_bytes = low_bytes.transpose(turn) if turn is not None else low_bytes
                working = deep.from_bytes(image, low_bytes, image.info.get("transparency"))
            else:
                working, icc = _to_working_mode(image, icc, _sample_bits(self._png_rawmode))
                if working is image and getattr(image, "is_animated", False):
                    # Detached from the file: a writer walks the frames of what it is given
                    # (Pillow's AVIF writer does, even for one frame), seeking the file away.
                    working = image.copy()
            return working, _metadata(image, icc, exif, xmp)

    def _low_bytes(self) -> Image.Image | None:
        """For 16-bit colour, which Pillow decodes to its samples' high bytes, the low bytes:
        the file decoded again with the rawmode of the other byte order."""
        if self._low_rawmode is None or self._source is None:
            return None
        self._source.seek(self._start)
        again = Image.open(self._source, formats=(self._file.format,))
        again.tile = deep.with_rawmode(again.tile, self._low_rawmode)
        again.load()
        return again

    def _deep_heif(self) -> DeepImage | None:
        """A 10- or 12-bit colour HEIF at its full depth: decoded again, without the reduction
        to 8 bits of pi-heif's Pillow plugin (libheif has already turned and mirrored it
        upright). None for any other image (a 16-bit grey HEIF is Pillow's I;16 already)."""
        file = self._file
        bits = int(file.info.get("bit_depth") or 8) if file.format == "HEIF" else 8
        if bits <= 8 or file.mode not in ("RGB", "RGBA") or self._source is None:
            return None
        self._source.seek(self._start)
        heif = pi_heif.open_heif(self._source, convert_hdr_to_8bit=False)
        mode, _, depth = heif.mode.partition(";")
        if depth != "16" or mode not in ("RGB", "RGBA") or heif.premultiplied_alpha:
            return None
        high, low = deep.split_samples(mode, heif.size, heif.data, heif.stride)
        del heif  # its 16-bit samples, 6 or 8 bytes a pixel, are not needed past this point
        return deep.from_bytes(high, low, bits=bits)

    @property
    def warnings(self) -> tuple[str, ...]:
        """What of the file was skipped as unreadable (optional PNG chunks), for the user."""
        return tuple(getattr(self._png_stream, "skipped", ()))

    @property
    def size(self) -> tuple[int, int]:
        """The size of the file's pixels, before the EXIF orientation turns them."""
        return self._file.size

    def frame_count(self) -> int:
        """How many frames an animated GIF, WebP or PNG (APNG) holds: 1 for other images,
        whose further images (a HEIC's burst, a TIFF's pages) are not an animation."""
        if self._file.format not in ANIMATED_INPUTS or self._default_image_only:
            return 1
        with _decoding_errors(self._settings):
            count = getattr(self._file, "n_frames", 1)  # a GIF's is counted through its blocks
            return count - 1 if self.has_separate_default_image else count

    @property
    def has_separate_default_image(self) -> bool:
        """An APNG whose still (default) image, shown where it is not animated, is not one of
        its animation's frames."""
        return bool(self._file.format == "PNG" and self._file.info.get("default_image"))

    def reopened_for_still(self) -> SourceImage:
        """The file opened again from its start, none of it decoded, as its still (default)
        image alone: for an APNG whose frames could not be read."""
        assert self._source is not None
        self._source.seek(self._start)
        return open_image(self._source, self._settings, default_image_only=True)

    @contextmanager
    def _reading_frames(self) -> Iterator[None]:
        """While an animation's frames are read: an APNG's faults raise AnimationUnreadable
        (GIF and WebP have no still image to fall back on)."""
        stream = self._png_stream
        if isinstance(stream, pngchunks.TolerantPngStream):
            stream.animating = True
        try:
            yield
        except ImageRejected as exc:
            cause = exc.__cause__
            if self._file.format != "PNG" or cause is None:
                raise
            raise AnimationUnreadable(str(cause) or type(cause).__name__) from exc

    def decode_frames(self) -> tuple[list[Image.Image], FrameTiming, Metadata]:
        """Every frame of an animation, whole (the format's blending done), upright, each in
        a working mode; and the first frame's metadata (the file's).

        An APNG's default image, shown by viewers that do not animate, is not a frame.
        """
        file = self._file
        with self._reading_frames(), _decoding_errors(self._settings):
            first = 1 if self.has_separate_default_image else 0
            file.seek(first)
            exif = file.getexif()
            turns = _ORIENTATION_TRANSPOSES.get(exif.pop(ExifTags.Base.Orientation, 1), ())
            xmp = file.info.get("xmp") or file.info.get("XML:com.adobe.xmp")
            source_icc = file.info.get("icc_profile")
            frames, durations, icc = [], [], source_icc
            for index in range(first, first + self.frame_count()):
                file.seek(index)
                file.load()
                frame = file.copy()
                for turn in turns:
                    frame = frame.transpose(turn)
                working, icc = _to_working_mode(frame, source_icc)
                frames.append(working)
                durations.append(int(file.info.get("duration", 0)))
            timing = FrameTiming(tuple(durations), int(file.info.get("loop", 1)))
            return _on_one_canvas(frames), timing, _metadata(file, icc, exif, xmp)


def _on_one_canvas(frames: list[Image.Image]) -> list[Image.Image]:
    """The frames all of one size, the largest: Pillow grows a GIF's canvas when a frame reaches
    past its logical screen, and an animation's writer needs one size (WebP's refuses others).
    A smaller frame is placed at the top left (where the screen starts) on transparency."""
    size = (max(frame.width for frame in frames), max(frame.height for frame in frames))
    return [frame if frame.size == size else _padded(frame, size) for frame in frames]


def _padded(frame: Image.Image, size: tuple[int, int]) -> Image.Image:
    mode = {"L": "LA", "LA": "LA", "I": "I"}.get(frame.mode, "RGBA")  # I: no alpha to add
    canvas = Image.new(mode, size)
    canvas.paste(frame.convert(mode), (0, 0))
    return canvas


def _metadata(
    file: Image.Image, icc: bytes | None, exif: Image.Exif, xmp: str | bytes | None
) -> Metadata:
    """The file's metadata: what may be kept, and what it held, for the report."""
    xmp_bytes = (xmp.encode() if isinstance(xmp, str) else xmp) or None
    removable = []
    if exif:
        details = _exif_details(exif)
        removable.append(f"EXIF ({', '.join(details)})" if details else "EXIF")
    if xmp_bytes:
        removable.append("XMP")
    text_keys = getattr(file, "text", {}) if file.format == "PNG" else {}
    never_kept = [
        *(["comment"] if file.info.get("comment") else []),
        *(["text chunks"] if any(key != _PNG_XMP_KEY for key in text_keys) else []),
        *(["IPTC/Photoshop data"] if file.info.get("photoshop") else []),
    ]
    return Metadata(icc, exif or None, xmp_bytes, tuple(removable), tuple(never_kept))


# EXIF a user may not want to publish: (IFD, tags, name in the report); None: the main IFD.
_PRIVATE_EXIF = (
    (ExifTags.IFD.GPSInfo, None, "GPS position"),
    (
        ExifTags.IFD.Exif,
        (ExifTags.Base.BodySerialNumber, ExifTags.Base.CameraSerialNumber),
        "camera serial number",
    ),
    (ExifTags.IFD.Exif, (ExifTags.Base.LensSerialNumber,), "lens serial number"),
    (None, (ExifTags.Base.CameraSerialNumber,), "camera serial number"),
    (ExifTags.IFD.Exif, (ExifTags.Base.CameraOwnerName,), "owner name"),
    (None, (ExifTags.Base.Artist,), "owner name"),
    (None, (ExifTags.Base.Make, ExifTags.Base.Model), "camera make and model"),
    (ExifTags.IFD.Exif, (ExifTags.Base.DateTimeOriginal,), "date and time"),
    (None, (ExifTags.Base.DateTime,), "date and time"),
)


def _exif_details(exif: Image.Exif) -> list[str]:
    """The private EXIF entries present, once each, in ``_PRIVATE_EXIF``'s order."""
    found: dict[str, None] = {}
    for ifd, tags, name in _PRIVATE_EXIF:
        try:
            directory = exif if ifd is None else exif.get_ifd(ifd)
        except Exception:  # a malformed directory: reported as EXIF, without details
            continue
        if directory and (tags is None or any(tag in directory for tag in tags)):
            found[name] = None
    return list(found)


# The formats whose extra frames make an animation, as Pillow names them.
ANIMATED_INPUTS = ("GIF", "WEBP", "PNG")
# What each EXIF orientation asks to make the picture upright (as ImageOps.exif_transpose does).
_ORIENTATION_TRANSPOSES = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


def open_image(
    source: BinaryIO, settings: ProcessingSettings, *, default_image_only: bool = False
) -> SourceImage:
    """Read the header of ``source`` and check its declared size against the pixel limit.
    ``default_image_only``: an APNG is its still (default) image alone, not its frames."""
    # A truncated image must fail, not come out half grey; only a global switch controls this.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    start = source.tell()
    with _decoding_errors(settings, source, start):
        _refuse_what_crashes_the_heif_decoder(source, start)
        # No `with`: closing the image would discard the pixels; the caller owns `source`.
        file = Image.open(source, formats=INPUT_FORMATS)
        _check_source_pixels(file.size, settings)  # nothing is decoded yet
        return SourceImage(file, settings, source, start, default_image_only=default_image_only)


def decode(
    source: BinaryIO, settings: ProcessingSettings
) -> tuple[Image.Image | DeepImage, Metadata]:
    """The first frame at full size, upright, in a working mode, with its metadata."""
    return open_image(source, settings).decode()


def _refuse_what_crashes_the_heif_decoder(source: BinaryIO, start: int) -> None:
    """A HEIF file whose item entries would crash pi-heif (``heifboxes``) is refused first."""
    media_type = sniff_media_type(source.read(SNIFF_BYTES))
    source.seek(start)
    if media_type not in ("image/heic", "image/heif", "image/avif"):
        return
    fault = heifboxes.find_item_fault(source)
    source.seek(start)
    if fault:
        label = "AVIF" if media_type == "image/avif" else "HEIC"
        raise ImageRejected(f"not a supported image: a broken {label} file ({fault})")


@contextmanager
def _decoding_errors(
    settings: ProcessingSettings, source: BinaryIO | None = None, start: int = 0
) -> Iterator[None]:
    """Any failure of Pillow's readers becomes ImageRejected with a reason for the user: which
    format the file claims to be and what is wrong with it, when ``source`` can be read again."""
    try:
        yield
    except (ImageRejected, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow checks its own limit while opening, before ours; under it, ours is passed too.
        limit = settings.max_image_pixels
        if Image.MAX_IMAGE_PIXELS is not None and limit <= Image.MAX_IMAGE_PIXELS:
            raise ImageRejected(
                f"image is too large: more than the limit of {limit} pixels"
            ) from exc
        raise ImageRejected(f"image is too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        claimed = _claimed_format(source, start)
        if claimed is None:
            raise ImageRejected(
                "not a supported image (PNG, JPEG, GIF, WebP, BMP, TIFF, AVIF or HEIC)"
            ) from exc
        fault = _fault(claimed, source, start, None)
        raise ImageRejected(f"not a supported image: a broken {fault}") from exc
    except Exception as exc:  # any decoder failure is the image's fault
        claimed = _claimed_format(source, start)
        reason = str(exc) if claimed is None else _fault(claimed, source, start, exc)
        raise ImageRejected(f"cannot decode the image: {reason}") from exc


def _claimed_format(source: BinaryIO | None, start: int) -> str | None:
    """The Pillow format the file's signature names, among the inputs accepted; None if none."""
    if source is None:
        return None
    try:
        source.seek(start)
        media_type = sniff_media_type(source.read(SNIFF_BYTES))
    except (OSError, ValueError):  # an unseekable or closed source
        return None
    media_type = _MEDIA_TYPE_ALIASES.get(media_type or "", media_type)
    return next((name for name in INPUT_FORMATS if Image.MIME.get(name) == media_type), None)


def _fault(claimed: str, source: BinaryIO | None, start: int, error: Exception | None) -> str:
    """ "<format> file (what is wrong)": truncated, bad CRC, bad header, or the decoder's words.

    ``error`` is the decoder's failure; None when the file was not even recognised, then the
    format's own opener is asked why (Image.open only says it could not identify the file).
    """
    label = _FORMAT_LABELS.get(claimed, claimed)
    assert source is not None  # a format is claimed only by a source read again
    try:
        source.seek(start)
        if claimed == "PNG" and (found := pngchunks.find_png_fault(source)):
            return f"{label} file ({found})"
        if error is None:
            source.seek(start)
            Image.OPEN[claimed][0](source, "")
            return f"{label} file (bad header)"
    except (ImageRejected, MemoryError):
        raise
    except Exception as exc:  # the opener's reason for refusing the header
        return f"{label} file (bad header: {str(exc).strip()})"
    text = str(error).strip()  # pi-heif's end with a newline
    if isinstance(error, EOFError) or "truncated" in text.lower():
        return f"{label} file (truncated: {text})"
    return f"{label} file ({text})"


def _check_source_pixels(size: tuple[int, int], settings: ProcessingSettings) -> None:
    width, height = size
    if width * height > settings.max_image_pixels:
        raise ImageRejected(
            f"image is {width}x{height} ({width * height} pixels), "
            f"more than the limit of {settings.max_image_pixels} pixels"
        )


_WORKING_MODES = {"L", "LA", "RGB", "RGBA", "I"}
# The transposition that makes each EXIF orientation upright, as ImageOps.exif_transpose does.
_ORIENTATION_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
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


def _to_working_mode(
    image: Image.Image, icc: bytes | None, bits: int | None = None
) -> tuple[Image.Image, bytes | None]:
    """``image`` in a working mode; ``bits`` is a PNG's bit depth, which a key colour is in."""
    mode = image.mode
    key = image.info.get("transparency")
    if key is not None and mode in ("1", "L", "I", "I;16", "I;16B", "RGB"):
        return _key_colour_transparent(image, key, bits), icc
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


# PNG sample rawmodes (Pillow's names) by bit depth.
_RAWMODE_BITS = {"1": 1, "L;2": 2, "L;4": 4, "L": 8, "RGB": 8, "I;16B": 16}


def _sample_bits(rawmode: object) -> int | None:
    return _RAWMODE_BITS.get(rawmode) if isinstance(rawmode, str) else None


def _key_colour_transparent(image: Image.Image, key: object, bits: int | None) -> Image.Image:
    """A grey or RGB PNG with a tRNS key colour: the pixels of exactly that colour transparent.

    Pillow decodes 1-, 2- and 4-bit grey scaled to 0..255 but gives the key as stored: it is
    scaled the same way. 16-bit grey with a key becomes 8-bit grey with alpha (LA).
    """
    if image.mode == "RGB":
        if not (isinstance(key, tuple) and len(key) == 3):
            return image
        return _rgb_keyed(image, key)  # 8-bit: 16-bit RGB is a DeepImage, keyed there
    if not isinstance(key, int):
        return image
    if bits is not None and bits < 8 and key <= (top := (1 << bits) - 1):
        key = key * 255 // top
    grey = image.convert("L") if image.mode == "1" else image
    if grey.mode == "L":
        alpha = grey.point(lambda value: 0 if value == key else 255)
        return Image.merge("LA", (grey, alpha))
    grey = grey.convert("I")
    opaque = ImageMath.lambda_eval(lambda ops: ops["notequal"](ops["grey"], key), grey=grey)
    alpha = opaque.convert("L").point(lambda value: 255 if value else 0)
    return Image.merge("LA", (sixteen_to_eight(grey), alpha))


def _rgb_keyed(image: Image.Image, key: tuple[int, ...]) -> Image.Image:
    masks = [
        band.point(lambda value, wanted=wanted: 255 if value == wanted else 0)
        for band, wanted in zip(image.split(), key, strict=True)
    ]
    # Transparent where all three bands match: the darkest of the three "matches" masks.
    matches = ImageChops.darker(ImageChops.darker(masks[0], masks[1]), masks[2])
    rgba = image.convert("RGBA")
    rgba.putalpha(matches.point(lambda value: 0 if value else 255))
    return rgba


def _stretch_float(image: Image.Image) -> Image.Image:
    # Floating-point data has no fixed range: stretch its own range over 16-bit grey.
    low, high = image.getextrema()
    scale = 65535 / (high - low) if high > low else 0
    return image.point(lambda value: (value - low) * scale).convert("I")


def _to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """CMYK or Lab to RGB, through the embedded profile when there is a usable one; CMYK (a
    JPEG, YCCK too, or a TIFF) without one through the standard press profile it was most likely
    made for."""
    if icc:
        try:
            source_profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(
                image, source_profile, _srgb_profile(), outputMode="RGB"
            )
            if converted is not None:
                return converted
        except ImageCms.PyCMSError:
            pass  # a broken profile: as if there were none
    if image.mode == "CMYK":
        # Ink amounts (JPEG and TIFF alike: Pillow has already undone an Adobe JPEG's inverted
        # inks), most likely made for the usual press.
        return ImageCms.applyTransform(image, _standard_cmyk_to_srgb())
    return image.convert("RGB")


@lru_cache(maxsize=1)
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


# FOGRA39 (offset on coated paper), made from freely licensed data: profiles/README.md.
STANDARD_CMYK_PROFILE = resources.files("darkroom.worker") / "profiles" / "fogra39-low.icc"


@lru_cache(maxsize=1)
def _standard_cmyk_to_srgb() -> ImageCms.ImageCmsTransform:
    """Built once (a CMYK table takes milliseconds to prepare) and shared by the task threads:
    without LittleCMS's one-pixel cache, applying it keeps no state."""
    cmyk = ImageCms.ImageCmsProfile(io.BytesIO(STANDARD_CMYK_PROFILE.read_bytes()))
    return ImageCms.buildTransform(
        cmyk, _srgb_profile(), "CMYK", "RGB", flags=ImageCms.Flags.NOCACHE
    )


# ---------------------------------------------------------------------------------------------
# Encoder limits: checked when the pipeline is planned, before anything is decoded further.

# The longest side each encoder writes: libjpeg's JPEG_MAX_DIMENSION, libwebp's 14-bit sizes,
# PNG's 31-bit ones. Pillow fails only once the pixels are in hand, with an OSError a task
# loop would retry.
ENCODER_MAX_SIDE: dict[FormatName, int] = {
    "png": 2**31 - 1,
    "jpeg": 65_500,
    "webp": 16_383,
    "avif": 65_536,  # AV1 frames: libavif refuses 65537 (measured)
}


def check_encodable(size: tuple[int, int], output: OutputFormat) -> None:
    """Raise ImageRejected when ``output``'s encoder cannot write an image of ``size``."""
    longest = ENCODER_MAX_SIDE[output.name]
    if max(size) > longest:
        raise ImageRejected(
            f"a {size[0]}x{size[1]} image cannot be written as {output.name}: its sides are "
            f"at most {longest} pixels; resize it or choose another format"
        )


# ---------------------------------------------------------------------------------------------
# Encoding

# The colour space an ICC profile describes, from its header, per output mode.
_ICC_SPACES = {"L": b"GRAY", "LA": b"GRAY", "I;16": b"GRAY", "RGB": b"RGB ", "RGBA": b"RGB "}


def encode(
    image: Image.Image | DeepImage,
    metadata: Metadata,
    output: OutputFormat,
    destination: BinaryIO,
    settings: ProcessingSettings,
) -> None:
    """Write ``image``; ``metadata`` holds only what is to be kept (EXIF and XMP when asked)."""
    check_encodable(image.size, output)
    if isinstance(image, DeepImage):
        if output.name == "png":
            _write_deep_png(image, metadata, destination, settings)
            return
        image = image.to_eight()
    image = _for_format(image, output.name)
    image.save(
        destination,
        format=output.name.upper(),
        **_save_options(image, metadata, output, settings),
    )


def encode_frames(
    frames: list[Image.Image],
    timing: FrameTiming,
    metadata: Metadata,
    output: OutputFormat,
    destination: BinaryIO,
    settings: ProcessingSettings,
) -> None:
    """Write ``frames`` as one animation: an APNG or an animated WebP (``ANIMATED_FORMATS``)."""
    assert output.name in ANIMATED_FORMATS
    frames = _in_one_mode([_for_format(frame, output.name) for frame in frames])
    first, *rest = frames
    options = _save_options(first, metadata, output, settings)
    first.save(
        destination,
        format=output.name.upper(),
        save_all=True,
        append_images=rest,
        duration=list(timing.durations),
        loop=timing.loop,
        **options,
    )


# Output formats that hold an animation (an APNG is a PNG that older viewers show still).
ANIMATED_FORMATS: tuple[FormatName, ...] = ("png", "webp")
# libavif's speed 0..10 (Pillow's default 6). At quality 75 on 1024x768 photo-like images
# (bench/images.py): speed 6 takes 233 ms of CPU for 53 KB at 42.6 dB PSNR, 8 takes 71 ms for
# 66 KB at 41.9 dB, 10 takes 36 ms for 62 KB at 42.3 dB; on a sharp-edged synthetic picture 10
# made files a third larger than 8. 8: a third of 6's time, sizes steady. docs/benchmarks.md.
AVIF_SPEED = 8


def _save_options(
    image: Image.Image, metadata: Metadata, output: OutputFormat, settings: ProcessingSettings
) -> dict[str, object]:
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
    elif output.name == "avif":
        options["quality"] = output.quality or settings.avif_quality
        options["speed"] = AVIF_SPEED
    else:
        options["quality"] = output.quality or settings.webp_quality
    return options


def _in_one_mode(frames: list[Image.Image]) -> list[Image.Image]:
    """The frames in one mode: a GIF's frames may differ (the first with a palette, RGB, then
    RGBA once a frame has transparency); an animation's frames share one mode."""
    modes = {frame.mode for frame in frames}
    if len(modes) == 1:
        return frames
    alpha = "A" if modes & {"LA", "RGBA"} else ""
    mode = ("RGB" if modes & {"RGB", "RGBA"} else "L") + alpha
    return [frame.convert(mode) for frame in frames]


def _write_deep_png(
    image: DeepImage, metadata: Metadata, destination: BinaryIO, settings: ProcessingSettings
) -> None:
    icc = metadata.icc if metadata.icc and metadata.icc[16:20] == b"RGB " else None
    exif = _exif_bytes(metadata.exif, image.size) if metadata.exif is not None else None
    chunks = deep.png_metadata_chunks(icc, exif, metadata.xmp)
    deep.write_png(image, destination, settings.png_compress_level, chunks)


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
        image = image.convert("I;16") if name == "png" else sixteen_to_eight(image)
    if name == "jpeg" and image.mode in ("LA", "RGBA"):
        return _on_white(image)
    if name == "webp" and image.mode in ("L", "LA"):
        return image.convert("RGB" if image.mode == "L" else "RGBA")
    if name == "avif" and image.mode == "LA":
        return image.convert("RGBA")  # AVIF keeps grey, but not grey with alpha
    return image


def _on_white(image: Image.Image) -> Image.Image:
    colour_mode = image.mode[:-1]
    background = Image.new(colour_mode, image.size, (255,) * len(colour_mode))
    background.paste(image.convert(colour_mode), mask=image.getchannel("A"))
    return background
