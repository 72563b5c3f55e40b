"""Whether an animated GIF, WebP or PNG (APNG) stays animated through a pipeline.

It does when every step means the same on each frame, the output format holds an animation
(``ANIMATED_FORMATS``: PNG as an APNG, WebP) and the frames fit the limits: at most
``max_frames`` frames, and frames x pixels within the pixel budget (``max_image_pixels``), as
all of them are decoded at once. Otherwise the result is the first frame, as for any still
image, and the verdict's note says why, for the job's status. An APNG whose frames cannot be
read gives its still (default) image instead, as its specification asks.
"""

from __future__ import annotations

from dataclasses import dataclass

from darkroom.contract.pipeline import (
    Blur,
    Crop,
    Flip,
    Flop,
    Grayscale,
    Pipeline,
    Resize,
    Rotate,
    Sharpen,
    Swap,
    Thumbnail,
    Watermark,
)
from darkroom.worker.codec import (
    ANIMATED_FORMATS,
    AnimationUnreadable,
    ProcessingSettings,
    SourceImage,
)

# Steps that do the same to every frame, so a frame's result does not depend on the others.
# A smart resize looks at the content to choose its window: it chooses once, on the first frame,
# and crops every frame there (``operations.settle``), so the animation does not jump.
PER_FRAME_STEPS = (
    Swap,
    Grayscale,
    Resize,
    Thumbnail,
    Crop,
    Rotate,
    Flip,
    Flop,
    Blur,
    Sharpen,
    Watermark,
)


@dataclass(frozen=True)
class AnimationVerdict:
    keep: bool  # decode every frame and write an animation
    note: str | None = None  # what the job's status says; None for a still image


STILL = AnimationVerdict(keep=False)


def judge_animation(
    source: SourceImage, pipeline: Pipeline, settings: ProcessingSettings
) -> AnimationVerdict:
    """Whether ``source`` stays animated through ``pipeline``, and the note saying so."""
    count = source.frame_count()
    if count == 1:
        return STILL
    reason = _why_first_frame_only(source, count, pipeline, settings)
    if reason:
        return AnimationVerdict(keep=False, note=f"first frame only of {count}: {reason}")
    return AnimationVerdict(keep=True, note=f"animation kept: {count} frames")


def still_instead(
    source: SourceImage, failure: AnimationUnreadable
) -> tuple[SourceImage, AnimationVerdict]:
    """For an APNG whose frames could not be read: the file opened again as its still
    (default) image, as the APNG specification asks, and the verdict whose note says why."""
    note = f"still image only: its frames cannot be read ({failure.reason})"
    return source.reopened_for_still(), AnimationVerdict(keep=False, note=note)


def _why_first_frame_only(
    source: SourceImage, count: int, pipeline: Pipeline, settings: ProcessingSettings
) -> str | None:
    output = pipeline.output_format
    if output.name not in ANIMATED_FORMATS:
        held = " or ".join(ANIMATED_FORMATS)
        return f"{output.name} does not hold an animation ({held} does)"
    for step in pipeline.operations:
        if not isinstance(step, PER_FRAME_STEPS):
            return f"{step.text} is not applied frame by frame"
    if count > settings.max_frames:
        return f"more than the limit of {settings.max_frames} frames"
    width, height = source.size
    if count * width * height > settings.max_image_pixels:
        return (
            f"{count} frames of {width}x{height} are {count * width * height} pixels, "
            f"more than the limit of {settings.max_image_pixels}"
        )
    return None
