"""Image processing: parse the pipeline, decode, apply each step to the pixels, encode.

The grammar (what each step means, its limits, the canonical text) is
``darkroom.contract.pipeline``; reading and writing files, colour modes and metadata are
``darkroom.worker.codec``. This module holds what each operation does to the pixels and
``process_image``, which runs the three in turn, and ``plan_shrink_on_load``, which lets a JPEG
that is first scaled down be decoded at a fraction of its size.

Pure functions of their inputs: no HTTP, no global state changed per call, safe to call from
several threads at once.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any, BinaryIO

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont, ImageOps

from darkroom.contract.pipeline import (
    Blur,
    Crop,
    Flip,
    Flop,
    Grayscale,
    InvalidPipeline,
    Operation,
    OutputFormat,
    Pipeline,
    Resize,
    Rotate,
    Sharpen,
    Swap,
    Thumbnail,
    Watermark,
    parse_pipeline,
)
from darkroom.worker import deep
from darkroom.worker.animation import judge_animation, still_instead
from darkroom.worker.codec import (
    AnimationUnreadable,
    ImageRejected,
    Metadata,
    ProcessingSettings,
    SourceImage,
    check_encodable,
    encode,
    encode_frames,
    open_image,
    sixteen_to_eight,
)
from darkroom.worker.stages import StageDone, no_stage


def process_image(
    source: BinaryIO,
    destination: BinaryIO,
    pipeline_text: str | None,
    settings: ProcessingSettings,
    timings: dict[str, float] | None = None,
    notes: list[str] | None = None,
    *,
    stage_done: StageDone = no_stage,
) -> str:
    """Decode ``source``, apply the pipeline, encode to ``destination``; return the media type.

    Raises ImageRejected for anything wrong with the image or, since no retry can fix it either,
    with the pipeline. Errors writing to ``destination`` propagate unchanged. When ``timings``
    is given, the seconds spent in ``decode``, ``operation`` and ``encode`` are stored in it;
    ``notes`` receives what the job's status should tell (whether an animation was kept,
    what of the file was skipped as unreadable, what of its metadata the result dropped).
    ``stage_done`` is told of each stage as it ends: decode, each step by its text, encode.
    """
    timings = {} if timings is None else timings
    try:
        pipeline = parse_pipeline(pipeline_text, settings)
    except InvalidPipeline as exc:
        raise ImageRejected(f"invalid pipeline: {exc}") from exc
    started = time.perf_counter()
    opened = open_image(source, settings)
    animation = judge_animation(opened, pipeline, settings)
    if animation.keep:
        try:
            frame_notes = [animation.note] if animation.note else []
            media_type = _process_frames(
                opened, pipeline, destination, settings, timings, started, frame_notes, stage_done
            )
        except AnimationUnreadable as exc:
            opened, animation = still_instead(opened, exc)
        else:
            if notes is not None:
                notes.extend([*frame_notes, *opened.warnings])
            return media_type
    operations, at_least = plan_shrink_on_load(pipeline.operations, opened.shrinkable_size)
    try:
        image, metadata = opened.decode(at_least)
    except AnimationUnreadable as exc:  # an APNG's first frame
        opened, animation = still_instead(opened, exc)
        image, metadata = opened.decode(at_least)
    if notes is not None:
        notes.extend([*([animation.note] if animation.note else []), *opened.warnings])
    del opened  # the decoded file, when a working-mode copy replaced it
    decoded = time.perf_counter()
    timings["decode"] = decoded - started
    stage_done("decode", started, decoded)
    output = pipeline.output_format
    # every size known before any step allocates: a bomb fails here, once, with the reason
    plan_sizes(operations, image.size, settings, output)
    step_started = decoded
    for operation in operations:
        image = apply(operation, image)
        step_ended = time.perf_counter()
        stage_done(operation.text, step_started, step_ended)
        step_started = step_ended
    operated = time.perf_counter()
    timings["operation"] = operated - decoded
    kept = _kept_metadata(metadata, pipeline, notes)
    encode(image, kept, output, destination, settings)
    encoded = time.perf_counter()
    timings["encode"] = encoded - operated
    stage_done("encode", operated, encoded)
    return output.media_type


def _process_frames(
    opened: SourceImage,
    pipeline: Pipeline,
    destination: BinaryIO,
    settings: ProcessingSettings,
    timings: dict[str, float],
    started: float,
    notes: list[str] | None,
    stage_done: StageDone,
) -> str:
    """``process_image`` for an animation kept: every frame through every step (a step's
    stage is the time all frames took in it, the steps laid end to end after the decode)."""
    frames, timing, metadata = opened.decode_frames()
    decoded = time.perf_counter()
    timings["decode"] = decoded - started
    stage_done("decode", started, decoded)
    output = pipeline.output_format
    # every size known before any step allocates, and all the result's frames held at once
    sizes = plan_sizes(pipeline.operations, frames[0].size, settings, output)
    _check_animation_pixels(sizes[-1] if sizes else frames[0].size, len(frames), pipeline, settings)
    # a smart crop's window is chosen on the first frame and kept for the others
    steps: list[Operation | _ResizeTo | _CoverBox] = list(pipeline.operations)
    results = []
    step_seconds = [0.0] * len(steps)
    for frame in frames:
        for index, operation in enumerate(steps):
            step_started = time.perf_counter()
            steps[index] = operation = settle(operation, frame)
            frame = apply(operation, frame)
            step_seconds[index] += time.perf_counter() - step_started
        results.append(frame)
    step_started = decoded
    for operation, seconds in zip(pipeline.operations, step_seconds, strict=True):
        stage_done(operation.text, step_started, step_started + seconds)
        step_started += seconds
    operated = time.perf_counter()
    timings["operation"] = operated - decoded
    kept = _kept_metadata(metadata, pipeline, notes)
    encode_frames(results, timing, kept, output, destination, settings)
    encoded = time.perf_counter()
    timings["encode"] = encoded - operated
    stage_done("encode", operated, encoded)
    return output.media_type


def _kept_metadata(metadata: Metadata, pipeline: Pipeline, notes: list[str] | None) -> Metadata:
    """What of the metadata the result carries; what it drops is said in ``notes``."""
    if notes is not None and (removed := metadata.removed(pipeline.keep_metadata)):
        notes.append(f"metadata removed: {', '.join(removed)}")
    return metadata if pipeline.keep_metadata else replace(metadata, exif=None, xmp=None)


def _check_animation_pixels(
    size: tuple[int, int], count: int, pipeline: Pipeline, settings: ProcessingSettings
) -> None:
    """All the result's frames are held at once: together they must keep to the pixel budget."""
    width, height = size
    if count * width * height > settings.max_image_pixels:
        raise ImageRejected(
            f"{pipeline.text} makes {count} frames of {width}x{height}, "
            f"{count * width * height} pixels, more than the limit of "
            f"{settings.max_image_pixels}"
        )


# ---------------------------------------------------------------------------------------------
# Shrink-on-load: a JPEG that the pipeline first scales down is decoded at 1/2, 1/4 or 1/8 size.

# Steps whose result does not depend on the image's scale, so they may run on a shrunk image.
_SCALE_FREE = (Swap, Grayscale, Flip, Flop)
# How much larger than the first downscale's output the decoded image must stay. 1.0, as
# thumbor does: the DCT scaling is itself a good low-pass filter. Measured on 2048x1536 q90
# photos fitted in 512x512 (mean absolute difference from a full-size decode + LANCZOS):
# 1.0 takes 9 ms (0.87 levels), 2.0 takes 20 ms (0.52 levels), the full decode 45 ms.
SHRINK_ON_LOAD_GAP = 1.0


@dataclass(frozen=True)
class _ResizeTo:
    """A fit-inside step with its output size worked out from the source's full size, which
    a decoder's rounding up of the shrunk size would otherwise change by a pixel."""

    size: tuple[int, int]
    text: str


def plan_shrink_on_load(
    operations: tuple[Operation, ...], size: tuple[int, int] | None
) -> tuple[tuple[Operation | _ResizeTo, ...], tuple[int, int] | None]:
    """The operations to run on an image of upright ``size``, and the smallest size it may be
    decoded at (None: full size). A ``size`` of None: the image cannot shrink on load.

    Only a first ``resize`` or ``thumbnail`` that scales down, after nothing but scale-free
    steps and quarter turns, allows shrinking: a crop, blur or sharpen before it works in pixels
    of the full size. A fit-inside step becomes a ``_ResizeTo`` the size it gives the full image.
    """
    found = None if size is None else _first_downscale(operations)
    if size is None or found is None:
        return operations, None
    index, turned = found
    step = operations[index]
    assert isinstance(step, Resize | Thumbnail)
    width, height = size[::-1] if turned else size
    if isinstance(step, Thumbnail) and width <= step.size and height <= step.size:
        return operations, None  # a thumbnail never enlarges: nothing to resize
    box = (step.size, step.size) if isinstance(step, Thumbnail) else (step.width, step.height)
    fill = isinstance(step, Resize) and step.fill
    scale = (max if fill else min)(box[0] / width, box[1] / height)
    if scale * SHRINK_ON_LOAD_GAP >= 1:
        return operations, None
    planned: tuple[Operation | _ResizeTo, ...] = operations
    if not fill:
        exact = _ResizeTo(_fit_size((width, height), *box), step.text)
        planned = (*operations[:index], exact, *operations[index + 1 :])
    at_least = (
        math.ceil(width * scale * SHRINK_ON_LOAD_GAP),
        math.ceil(height * scale * SHRINK_ON_LOAD_GAP),
    )
    return planned, (at_least[::-1] if turned else at_least)


def _first_downscale(operations: tuple[Operation, ...]) -> tuple[int, bool] | None:
    """Where the first resize or thumbnail is, if only scale-free steps come before it, and
    whether quarter turns before it swap the axes."""
    turned = False
    for index, step in enumerate(operations):
        if isinstance(step, Resize | Thumbnail):
            return index, turned
        if isinstance(step, Rotate) and step.hundredths % 9000 == 0:
            turned ^= step.hundredths in (9000, 27000)
        elif not isinstance(step, _SCALE_FREE):
            return None
    return None


def apply(operation: Operation | _ResizeTo | _CoverBox, image: Any) -> Any:
    """What ``operation`` makes of ``image`` (a working-mode image: L, LA, RGB, RGBA or I, or
    16-bit colour, a ``deep.DeepImage``)."""
    operation = settle(operation, image)
    if isinstance(image, deep.DeepImage):
        return deep.apply(operation, image, apply)
    if isinstance(operation, _ResizeTo):  # planned by plan_shrink_on_load, not in the grammar
        return _resized(image, operation.size)
    if isinstance(operation, _CoverBox):  # a smart crop's window, chosen by ``settle``
        return image.resize(
            operation.size,
            Image.Resampling.LANCZOS,
            box=operation.box,
            reducing_gap=RESIZE_REDUCING_GAP,
        )
    return PIXEL_STEPS[type(operation)](operation, image)


# ---------------------------------------------------------------------------------------------
# Smart crop: the window of the most edge energy, found on a small grey copy.

# The grey copy's longer side: fine enough that small texture survives the shrinking (at 128 a
# 400-pixel image's 2-pixel stripes averaged away), cheap to measure (5 ms).
SMART_CROP_PROBE_SIDE = 512


@dataclass(frozen=True)
class _CoverBox:
    """A smart ``resize``'s decision: the source window (left, top, right, bottom) scaled to
    ``size``. Made once per step, so every band of a deep image and every frame of an
    animation get the same window."""

    box: tuple[float, float, float, float]
    size: tuple[int, int]
    text: str


def settle(operation: Any, image: Any) -> Any:
    """``operation`` with any choice it makes by looking at ``image`` made: a smart resize
    becomes the ``_CoverBox`` of its window; every other step is returned as it is."""
    if not (isinstance(operation, Resize) and operation.smart):
        return operation
    box = _smart_window(image.size, _grey_probe(image), operation.width, operation.height)
    return _CoverBox(box, (operation.width, operation.height), operation.text)


def _grey_probe(image: Any) -> Image.Image:
    """A grey copy of ``image`` at most ``SMART_CROP_PROBE_SIDE`` long, shrunk before it is
    converted, so a large image costs one box reduction."""
    factor = max(1, math.ceil(max(image.size) / SMART_CROP_PROBE_SIDE))
    if isinstance(image, deep.DeepImage):
        small = image.with_bands(lambda band: band.reduce(factor)).to_eight()
    else:
        small = image.reduce(factor) if factor > 1 else image
    return sixteen_to_eight(small) if small.mode == "I" else small.convert("L")


def _smart_window(
    size: tuple[int, int], probe: Image.Image, width: int, height: int
) -> tuple[float, float, float, float]:
    """The window of an image of ``size`` with the aspect of ``width`` x ``height``, as wide or
    as tall as the image (as ``ImageOps.fit`` crops), that holds the most edge energy of
    ``probe``, its small grey copy."""
    scale = max(width / size[0], height / size[1])  # the cover scale, as :fill
    window = (min(size[0], width / scale), min(size[1], height / scale))
    across = 0 if window[0] < size[0] else 1  # the axis the window slides along
    slack = (size[0] - window[0], size[1] - window[1])[across]
    if slack < 1:
        return (0.0, 0.0, float(size[0]), float(size[1]))
    profile = _edge_profile(probe, across)
    shrink = len(profile) / size[across]  # probe pixels per image pixel
    span = max(1, round(window[across] * shrink))
    sums = [sum(profile[:span])]
    for start in range(1, len(profile) - span + 1):
        sums.append(sums[-1] - profile[start - 1] + profile[start + span - 1])
    best = max(
        range(len(sums)), key=lambda start: (sums[start], -abs(start * 2 + span - len(profile)))
    )
    offset = min(slack, best / shrink)
    if across == 0:
        return (offset, 0.0, offset + window[0], float(size[1]))
    return (0.0, offset, float(size[0]), offset + window[1])


def _edge_profile(probe: Image.Image, across: int) -> list[float]:
    """Edge energy of ``probe`` (the larger difference from the right and lower neighbours),
    averaged over each column (``across`` 0) or row (1)."""
    energy = ImageChops.lighter(
        _neighbour_difference(probe, 1, 0), _neighbour_difference(probe, 0, 1)
    )
    width, height = probe.size
    line = energy.convert("F").resize(
        (width, 1) if across == 0 else (1, height), Image.Resampling.BOX
    )
    return [line.getpixel((i, 0) if across == 0 else (0, i)) for i in range(probe.size[across])]


def _neighbour_difference(grey: Image.Image, dx: int, dy: int) -> Image.Image:
    """Each pixel's absolute difference from its neighbour (dx, dy) further on; 0 where there
    is none."""
    width, height = grey.size
    canvas = Image.new("L", grey.size, 0)
    if width > dx and height > dy:
        ahead = grey.crop((dx, dy, width, height))
        canvas.paste(ImageChops.difference(ahead, grey.crop((0, 0, width - dx, height - dy))))
    return canvas


# ---------------------------------------------------------------------------------------------
# Planning sizes: each step's output size from its input size, before any pixel is allocated.

# The most bytes one pixel of a working image takes (RGBA, 32-bit grey).
WORKING_BYTES_PER_PIXEL = 4
# The most working images alive at once while a step runs: its input, a converted copy of the
# input (rotate adds alpha, blur premultiplies, JPEG output paints on white), its output, and
# one more for Pillow's own buffers. With every image within max_image_pixels, a task loop's
# pixels stay under PEAK_BYTES_PER_PIXEL * max_image_pixels (50 M pixels: 800 MB; measured:
# rotate:1 of a 6000x6000 RGB image peaked 430 MB over the process's size, 11.5 bytes per
# output pixel); the chart's worker memory limit is sized from it (helm/darkroom/values.yaml,
# worker.resources; tests/deploy/test_chart.py checks it).
PEAK_IMAGES_PER_STEP = 4
PEAK_BYTES_PER_PIXEL = WORKING_BYTES_PER_PIXEL * PEAK_IMAGES_PER_STEP


def plan_sizes(
    operations: tuple[Operation | _ResizeTo, ...],
    size: tuple[int, int],
    settings: ProcessingSettings,
    output: OutputFormat,
) -> list[tuple[int, int]]:
    """The size after each of ``operations`` run on an image of ``size``, checked: no image
    over the pixel limit, no crop outside its input, a result the output's encoder can write.

    Raises ImageRejected naming the step; nothing is allocated.
    """
    sizes = []
    for operation in operations:
        size = output_size(operation, size)
        width, height = size
        if width * height > settings.max_image_pixels:
            raise ImageRejected(
                f"{operation.text} would make a {width}x{height} image ({width * height} "
                f"pixels), more than the limit of {settings.max_image_pixels} pixels"
            )
        sizes.append(size)
    check_encodable(size, output)
    return sizes


def output_size(operation: Operation | _ResizeTo, size: tuple[int, int]) -> tuple[int, int]:
    """The size of what ``operation`` makes of an image of ``size`` (``apply`` agrees)."""
    width, height = size
    match operation:
        case _ResizeTo():
            return operation.size
        case Resize(fill=True):
            return operation.width, operation.height
        case Resize():
            return _fit_size(size, operation.width, operation.height)
        case Thumbnail():
            if width <= operation.size and height <= operation.size:
                return size
            return _fit_size(size, operation.size, operation.size)
        case Crop():
            _check_crop_inside(operation, size)
            return operation.width, operation.height
        case Rotate():
            return _rotated_size(size, operation.hundredths)
        case _:  # swap, grayscale, flip, flop, blur (same size, no padding), sharpen, watermark
            return size


def _check_crop_inside(step: Crop, size: tuple[int, int]) -> None:
    if step.x + step.width > size[0] or step.y + step.height > size[1]:
        raise ImageRejected(f"{step.text} lies outside the {size[0]}x{size[1]} image")


def _rotated_size(size: tuple[int, int], hundredths: int) -> tuple[int, int]:
    """The canvas ``_rotate`` makes: quarter turns swap the sides, other angles expand to hold
    the turned corners (Pillow's ``rotate(expand=True)`` arithmetic, to the pixel)."""
    width, height = size
    if hundredths % 18000 == 0:
        return size
    if hundredths % 9000 == 0:
        return height, width
    angle = math.radians(hundredths / 100)  # Pillow's reverse matrix turns by -(-angle)
    cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
    centre_x, centre_y = width / 2, height / 2
    shift_x = cos * -centre_x + sin * -centre_y + centre_x
    shift_y = -sin * -centre_x + cos * -centre_y + centre_y
    corners = [(0, 0), (width, 0), (width, height), (0, height)]
    xs = [cos * x + sin * y + shift_x for x, y in corners]
    ys = [-sin * x + cos * y + shift_y for x, y in corners]
    return (
        math.ceil(max(xs)) - math.floor(min(xs)),
        math.ceil(max(ys)) - math.floor(min(ys)),
    )


def use_pixel_limit(settings: ProcessingSettings) -> None:
    """Make Pillow's own decompression-bomb limit the configured one, in this process.

    Pillow refuses images over its MAX_IMAGE_PIXELS (89,478,485 by default) while opening,
    before ours is checked: a configured limit above it had no effect. Set once per process
    (it is a global), by each task loop before its first task.
    """
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels


# ---------------------------------------------------------------------------------------------
# The operations


def _swap(step: Swap, image: Image.Image) -> Image.Image:
    """Output is (G, R, B), alpha kept."""
    if image.mode not in ("RGB", "RGBA"):
        return image  # grey: red and green are the same channel
    bands = image.split()
    return Image.merge(image.mode, (bands[1], bands[0], *bands[2:]))


def _grayscale(step: Grayscale, image: Image.Image) -> Image.Image:
    return {"RGB": image.convert("L"), "RGBA": image.convert("LA")}.get(image.mode, image)


def _resize(step: Resize, image: Image.Image) -> Image.Image:
    if step.fill:
        return ImageOps.fit(image, (step.width, step.height), Image.Resampling.LANCZOS)
    return _fit_inside(image, step.width, step.height)


def _thumbnail(step: Thumbnail, image: Image.Image) -> Image.Image:
    if image.width <= step.size and image.height <= step.size:
        return image
    return _fit_inside(image, step.size, step.size)


def _crop(step: Crop, image: Image.Image) -> Image.Image:
    _check_crop_inside(step, image.size)
    return image.crop((step.x, step.y, step.x + step.width, step.y + step.height))


# Clockwise quarter turns; Pillow's ROTATE_90 is anticlockwise.
_QUARTER_TURNS = {
    9000: Image.Transpose.ROTATE_270,
    18000: Image.Transpose.ROTATE_180,
    27000: Image.Transpose.ROTATE_90,
}


def _rotate(step: Rotate, image: Image.Image) -> Image.Image:
    if step.hundredths == 0:
        return image
    if step.hundredths in _QUARTER_TURNS:
        return image.transpose(_QUARTER_TURNS[step.hundredths])
    # New corners are transparent; JPEG output then paints them white.
    if image.mode in ("L", "RGB"):
        image = image.convert(image.mode + "A")
    return image.rotate(-step.hundredths / 100, Image.Resampling.BICUBIC, expand=True)


def _flip(step: Flip, image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)


def _flop(step: Flop, image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def _blur(step: Blur, image: Image.Image) -> Image.Image:
    blur = ImageFilter.GaussianBlur(step.hundredths / 100)
    if image.mode == "I":
        image = sixteen_to_eight(image)  # Pillow cannot blur 32-bit integer images
    # Blur premultiplied colour, else transparent pixels' colour bleeds into the edges.
    premultiplied = {"RGBA": "RGBa", "LA": "La"}.get(image.mode)
    if premultiplied is None:
        return image.filter(blur)
    return image.convert(premultiplied).filter(blur).convert(image.mode)


def _sharpen(step: Sharpen, image: Image.Image) -> Image.Image:
    if image.mode == "I":  # 16-bit grey, or a band of 16-bit colour: 32-bit samples
        return deep.clipped(image.filter(ImageFilter.SHARPEN))
    if image.mode not in ("LA", "RGBA"):
        return image.filter(ImageFilter.SHARPEN)
    # Sharpening alpha would add halos to the outline; sharpen the colour only.
    colour = image.convert(image.mode[:-1]).filter(ImageFilter.SHARPEN)
    colour.putalpha(image.getchannel("A"))
    return colour


# The watermark: its height a fraction of the shorter side, narrower than a fraction of the
# width, a margin from the edges, white with a dark outline so it shows on any background.
WATERMARK_HEIGHT = 0.1
WATERMARK_MAX_WIDTH = 0.9
WATERMARK_MARGIN = 0.03
_FONT_FILE = "DejaVuSans.ttf"  # Bitstream Vera licence: fonts/DejaVuSans-LICENSE


# A FreeType face is not safe to use from two threads at once, and task loops may be threads.
_FONT_LOCK = threading.Lock()


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont:
    with resources.as_file(resources.files("darkroom.worker") / "fonts" / _FONT_FILE) as path:
        return ImageFont.truetype(str(path), size)


def _watermark(step: Watermark, image: Image.Image) -> Image.Image:
    if image.mode == "I":
        image = sixteen_to_eight(image)  # Pillow cannot composite 32-bit integer images
    stamp = _watermark_stamp(step, image.size)
    left, top = _watermark_place(step.position, image.size, stamp.size)
    box = (left, top, left + stamp.width, top + stamp.height)
    if image.mode in ("L", "RGB"):
        result = image.copy()
        result.paste(stamp.convert(image.mode), box, stamp)  # opaque: a plain blend
        return result
    # With alpha: "over" compositing, so the text shows on transparent pixels too.
    over = Image.alpha_composite(image.crop(box).convert("RGBA"), stamp)
    result = image.copy()
    result.paste(over.convert(image.mode), box)
    return result


def _watermark_stamp(step: Watermark, size: tuple[int, int]) -> Image.Image:
    """The text drawn on a transparent RGBA image just its size, at the step's opacity."""
    with _FONT_LOCK:
        font_size = max(1, round(min(size) * WATERMARK_HEIGHT))
        width = _font(font_size).getlength(step.label)
        if width > size[0] * WATERMARK_MAX_WIDTH:
            font_size = max(1, int(font_size * size[0] * WATERMARK_MAX_WIDTH / width))
        font = _font(font_size)
        outline = max(1, font_size // 16)
        left, top, right, bottom = font.getbbox(step.label, stroke_width=outline)
        stamp = Image.new("RGBA", (max(1, right - left), max(1, bottom - top)), (0, 0, 0, 0))
        ImageDraw.Draw(stamp).text(
            (-left, -top),
            step.label,
            font=font,
            fill=(255, 255, 255, 255),
            stroke_width=outline,
            stroke_fill=(0, 0, 0, 255),
        )
    opacity = step.opacity_hundredths / 100
    stamp.putalpha(stamp.getchannel("A").point(lambda alpha: round(alpha * opacity)))
    return stamp


def _watermark_place(
    position: str, size: tuple[int, int], stamp: tuple[int, int]
) -> tuple[int, int]:
    """The stamp's top-left corner for ``position``, ``WATERMARK_MARGIN`` in from the edges
    (less if the image is too small for it), never outside the image."""
    margin = round(min(size) * WATERMARK_MARGIN)
    spare = (max(0, size[0] - stamp[0]), max(0, size[1] - stamp[1]))
    vertical, _, horizontal = position.partition("-")
    if position == "center":
        return spare[0] // 2, spare[1] // 2
    x = min(margin, spare[0]) if horizontal == "left" else max(0, spare[0] - margin)
    y = min(margin, spare[1]) if vertical == "top" else max(0, spare[1] - margin)
    return x, y


def _fit_inside(image: Image.Image, width: int, height: int) -> Image.Image:
    return _resized(image, _fit_size(image.size, width, height))


def _fit_size(size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    # ImageOps.contain can round a side to 0 for very thin images.
    scale = min(width / size[0], height / size[1])
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


# Resizing first reduces by a whole factor (box averaging) while the rest stays above this gap:
# Pillow's thumbnail() default. Full-size 2048x1536 to 512x384: 13 ms instead of 32 ms, a mean
# absolute difference of 0.35 levels from a plain LANCZOS resize.
RESIZE_REDUCING_GAP = 2.0


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=RESIZE_REDUCING_GAP)


# One entry per operation of the grammar (a test checks that none is missing).
PIXEL_STEPS: dict[type, Callable[[Any, Image.Image], Image.Image]] = {
    Swap: _swap,
    Grayscale: _grayscale,
    Resize: _resize,
    Thumbnail: _thumbnail,
    Crop: _crop,
    Rotate: _rotate,
    Flip: _flip,
    Flop: _flop,
    Blur: _blur,
    Sharpen: _sharpen,
    Watermark: _watermark,
}
