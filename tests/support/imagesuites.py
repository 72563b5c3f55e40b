"""Public image test suites, fetched once into a cache for tests/worker/test_public_suites.py.

    python tests/support/imagesuites.py fetch     # scripts/test.sh runs this

Three sources, each the files other projects test their decoders with:

- ``pillow``: the test images in Pillow's source distribution on PyPI (its ``Tests/images``:
  Jason Summers' BMP Suite, APNG conformance files, odd TIFFs, CMYK and broken JPEGs, fuzzers'
  finds), the archive checked against its SHA-256;
- ``pillow-heif``: the test images in pillow-heif's source distribution on PyPI (HEIC and HEIF
  from phones and cameras, 10- and 12-bit, with alpha, thumbnails, depth and auxiliary images,
  broken ones), the archive checked against its SHA-256;
- ``pngsuite``: the PngSuite files (Willem van Schaik's) that pypng's source distribution on
  PyPI carries as hex in ``code/pngsuite.py`` (interlaced, key-colour and odd-size ones among
  them), read as data, never run, the archive checked against its SHA-256;
- ``go``: the image test data in Debian's ``golang-1.19-src`` package (more of PngSuite, and
  JPEGs in every chroma subsampling, progressive, CMYK, truncated), from ``apt-get download``
  (apt checks the package's signature).

Each source is unpacked into its own folder under ``cache_dir()``, with a ``.complete`` marker
written last that holds what was fetched (``_recipe``): an interrupted fetch, or one made by
other code (another archive, other suffixes), is fetched again. Only the image files are kept.
"""

from __future__ import annotations

import ast
import binascii
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

IMAGE_SUFFIXES = (
    *(".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"),
    *(".avif", ".heic", ".heif", ".hif"),
)
PILLOW_SDIST = (
    "pillow==13.0.0",
    "cdcd1ba258178f7356d74170c9a81ba4eab6a5d55748bc402a5a2a6fe6be3510",
)
PILLOW_HEIF_SDIST = (
    "pillow-heif==1.8.1",
    "521ebffb8a181d56c3904e5a61f20903edee0d9d3275967b8fb345f866215c06",
)
PYPNG_SDIST = (
    "pypng==0.20220715.0",
    "739c433ba96f078315de54c0db975aee537cbc3e1d0ae4ed9aab0ca1e427e2c1",
)
GO_PACKAGE = "golang-1.19-src"
# What each source is fetched from; a change here makes the cached copy be fetched again.
_RECIPES = {
    "pillow": PILLOW_SDIST,
    "pillow-heif": PILLOW_HEIF_SDIST,
    "pngsuite": PYPNG_SDIST,
    "go": (GO_PACKAGE,),
}
SOURCES = tuple(_RECIPES)


def cache_dir() -> Path:
    """Where the suites are kept: ``DARKROOM_IMAGE_SUITES``, else the user's cache folder."""
    chosen = os.environ.get("DARKROOM_IMAGE_SUITES")
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "darkroom" / "image-suites"


def suite_dir(source: str) -> Path | None:
    """The folder of a fetched source, or None when it has not been fetched (completely)."""
    folder = cache_dir() / source
    return folder if _is_complete(source, folder) else None


def suite_files(source: str) -> list[Path]:
    """The image files of a fetched source, sorted; empty when it has not been fetched."""
    folder = suite_dir(source)
    if folder is None:
        return []
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)


# --- fetching ---------------------------------------------------------------------------------


def fetch(source: str) -> Path:
    """Fetch one source into the cache, unless it is there already; its folder."""
    folder = cache_dir() / source
    if _is_complete(source, folder):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as scratch:
        _FETCHERS[source](Path(scratch), folder)
    (folder / ".complete").write_text(_recipe(source))
    return folder


def _recipe(source: str) -> str:
    """What a fetch of ``source`` takes, as the ``.complete`` marker records it."""
    return f"{source}: {' '.join(_RECIPES[source])}; {' '.join(IMAGE_SUFFIXES)}\n"


def _is_complete(source: str, folder: Path) -> bool:
    marker = folder / ".complete"
    return marker.exists() and marker.read_text() == _recipe(source)


def _sdist(requirement: str, sha256: str, scratch: Path) -> Path:
    """A source distribution from the package index pip is set up for, its hash checked.
    ``--no-binary`` names the package only: ``:all:`` would reach the build requirements that pip
    installs to read the archive's metadata, and build each of them from source too."""
    name = requirement.split("==")[0]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", name,
         "--dest", str(scratch), requirement],
        check=True,
    )  # fmt: skip
    (archive,) = scratch.glob("*.tar.gz")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"{archive.name}: SHA-256 {digest}, expected {sha256}")
    return archive


def _fetch_pillow(scratch: Path, folder: Path) -> None:
    with tarfile.open(_sdist(*PILLOW_SDIST, scratch)) as tar:
        _extract_images(tar, folder, _below(("Tests", "images")))


def _fetch_pillow_heif(scratch: Path, folder: Path) -> None:
    with tarfile.open(_sdist(*PILLOW_HEIF_SDIST, scratch)) as tar:
        _extract_images(tar, folder, _below(("tests", "images")))


def _below(under: tuple[str, ...]) -> Callable[[tuple[str, ...]], tuple[str, ...] | None]:
    """Where a member of an sdist goes: its path below ``under`` (after the archive's top
    folder), or None when it is not there."""
    depth = 1 + len(under)
    return lambda parts: parts[depth:] if parts[1:depth] == under else None


def _extract_images(
    tar: tarfile.TarFile, folder: Path, place: Callable[[tuple[str, ...]], tuple[str, ...] | None]
) -> None:
    """Each image file of ``tar`` that ``place`` gives a path (its parts) into ``folder``."""
    for member in tar.getmembers():
        if not member.isfile() or Path(member.name).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        relative = place(Path(member.name).parts)
        if relative is None:
            continue
        target = folder.joinpath(*relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        extracted = tar.extractfile(member)
        assert extracted is not None
        target.write_bytes(extracted.read())


def _fetch_pngsuite(scratch: Path, folder: Path) -> None:
    archive = _sdist(*PYPNG_SDIST, scratch)
    with tarfile.open(archive) as tar:
        (member,) = (m for m in tar.getmembers() if m.name.endswith("/code/pngsuite.py"))
        extracted = tar.extractfile(member)
        assert extracted is not None
        module = ast.parse(extracted.read())
    for name, data in _hex_images(module).items():
        (folder / f"{name}.png").write_bytes(data)


def _hex_images(module: ast.Module) -> dict[str, bytes]:
    """The ``png = {"name": _dehex(b"..."), ...}`` table of pngsuite.py, read without running
    it."""
    for node in module.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "png" for target in node.targets
        ):
            assert isinstance(node.value, ast.Dict)
            images = {}
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                assert isinstance(key, ast.Constant) and isinstance(value, ast.Call)
                (text,) = value.args
                assert isinstance(text, ast.Constant)
                images[key.value] = binascii.unhexlify(text.value.replace(b"\n", b""))
            return images
    raise RuntimeError("pngsuite.py has no png table")


def _fetch_go(scratch: Path, folder: Path) -> None:
    # As root, apt would download as its sandbox user, who cannot write to a private folder.
    sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
    subprocess.run(["apt-get", "download", "-qq", *sandbox, GO_PACKAGE], cwd=scratch, check=True)
    (package,) = scratch.glob("*.deb")
    contents = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(package)], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(contents)) as tar:
        _extract_images(tar, folder, _go_test_image)


def _go_test_image(parts: tuple[str, ...]) -> tuple[str, ...] | None:
    """A test file of Go's image packages, below ``image/``, its ``testdata`` folders left out."""
    if "testdata" not in parts or "image" not in parts:
        return None
    below = parts[parts.index("image") + 1 :]
    return tuple(part for part in below if part != "testdata")


_FETCHERS = {
    "pillow": _fetch_pillow,
    "pillow-heif": _fetch_pillow_heif,
    "pngsuite": _fetch_pngsuite,
    "go": _fetch_go,
}


def main(argv: list[str]) -> int:
    if argv[1:2] != ["fetch"]:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    for source in argv[2:] or SOURCES:
        if source == "go" and not shutil.which("apt-get"):
            print("[darkroom] image suite go: not fetched, no apt-get here (its tests skip)")
            continue
        folder = fetch(source)
        print(f"[darkroom] image suite {source}: {len(suite_files(source))} files in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
