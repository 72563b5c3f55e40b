"""The stages a worker times for a job's live progress: the log, and what process_image tells."""

from __future__ import annotations

import io
import itertools

from PIL import Image

from darkroom.contract.events import Stage
from darkroom.worker.operations import process_image
from darkroom.worker.stages import StageLog
from support.processing import SETTINGS


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_log_times_stages_from_its_start_and_hands_each_over_once():
    clock = Clock()
    log = StageLog(clock)
    log.add("download", 100.0, 100.0125)
    assert log.take_new() == (Stage("download", 0.0, 12.5),)
    assert log.take_new() == ()
    log.add("decode", 100.0125, 100.5)
    log.add("swap", 100.5, 100.5001)
    assert log.take_new() == (Stage("decode", 12.5, 487.5), Stage("swap", 500.0, 0.1))


def stages_of(data: bytes, pipeline: str) -> list[tuple[str, float, float]]:
    told: list[tuple[str, float, float]] = []
    process_image(
        io.BytesIO(data),
        io.BytesIO(),
        pipeline,
        SETTINGS,
        stage_done=lambda name, started, ended: told.append((name, started, ended)),
    )
    return told


def image_bytes(fmt: str, frames: int = 1) -> bytes:
    images = [Image.new("RGB", (40, 30), (n * 60, 0, 0)) for n in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, fmt, save_all=frames > 1, append_images=images[1:], duration=50)
    return buffer.getvalue()


def test_process_image_tells_decode_each_step_by_its_text_and_encode_in_order():
    told = stages_of(image_bytes("PNG"), "grayscale,resize:20x20,flip,jpeg:80")
    assert [name for name, _, _ in told] == [
        "decode",
        "grayscale",
        "resize:20x20",
        "flip",
        "encode",
    ]
    # one after the other, none before the last ended
    for (_, started, ended), (_, next_started, _) in itertools.pairwise(told):
        assert started <= ended <= next_started


def test_an_animations_steps_are_told_once_each_for_all_frames():
    told = stages_of(image_bytes("GIF", frames=3), "flop,thumbnail:20")
    assert [name for name, _, _ in told] == ["decode", "flop", "thumbnail:20", "encode"]
