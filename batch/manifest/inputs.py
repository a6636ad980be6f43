"""Inspection of the local files tasks read: existence, size, content digest, and image header.

Images are identified by content (Pillow reads the header only, never the pixels), so a JPEG named
`.png` is caught and a decompression bomb costs nothing. Results are cached per (path, size, mtime), so a
mask shared by a thousand edits is read once.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from batch.kind import ImageInfo, InputInfo
from batch.manifest.regular import open_regular

if TYPE_CHECKING:
    from batch.manifest.plancache import Sources

ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


class TooManyPixels(Exception):
    """An image whose header claims more pixels than Pillow opens (its decompression-bomb limit)."""


def read_image_info(path: Path) -> ImageInfo | None:
    """The header of an image file, or None when the file is not an image Pillow knows. Raises
    TooManyPixels for an image past Pillow's limit: it is an image, and "not an image" would mislead."""
    from PIL import Image  # Pillow loads with the first input image: a chat manifest never needs it

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                has_alpha = image.mode in ALPHA_MODES or "transparency" in image.info
                return ImageInfo(str(image.format), image.width, image.height, image.mode, has_alpha)
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(  # raised only while Pillow has a limit
            f"is an image of more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels (width x height): "
            "too large to open or send"
        ) from exc
    except Exception:  # Pillow raises many kinds on hostile bytes (IndexError, struct.error, ...)
        return None


class InputInspector:
    """Inspects input files, remembering the last `capacity` answers."""

    def __init__(self, capacity: int = 4096, sources: Sources | None = None) -> None:
        self._cache: OrderedDict[tuple[str, int, int], InputInfo] = OrderedDict()
        self._capacity = capacity
        self.sources = sources  # notes every file inspected, for the plan cache

    def known(self) -> list[tuple[tuple[str, int, int], InputInfo]]:
        """What it remembers, for another inspector (`remember`)."""
        return list(self._cache.items())

    def remember(self, known: list[tuple[tuple[str, int, int], InputInfo]]) -> None:
        """Take what another inspector found (`known`): a file whose size and modification time are the
        same is not read again."""
        for key, info in known:
            self._cache[key] = info
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)

    def inspect(self, path: Path) -> InputInfo:
        if self.sources is not None:
            self.sources.file(path)
        try:
            found = path.stat()
        except FileNotFoundError:
            return InputInfo(path, error="does not exist")
        except ValueError:  # e.g. a NUL byte in the path
            return InputInfo(path, error="is not a usable path")
        except OSError as exc:
            return InputInfo(path, error=f"cannot be read: {exc.strerror or exc}")
        if not path.is_file():
            return InputInfo(path, error="is not a regular file")
        key = (str(path), found.st_size, found.st_mtime_ns)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        try:
            with open_regular(path) as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as exc:
            return InputInfo(path, error=f"cannot be read: {exc.strerror or exc}")
        try:
            info = InputInfo(path, size=found.st_size, digest=digest, image=read_image_info(path))
        except TooManyPixels as exc:
            info = InputInfo(path, size=found.st_size, digest=digest, error=str(exc))
        self._cache[key] = info
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return info


def resolve(base: Path, raw: str) -> Path:
    """A manifest's path, relative to the manifest's folder (`~` expanded), made absolute."""
    return Path(os.path.normpath(base / Path(raw).expanduser()))


def read_file(path: Path) -> bytes:
    """The bytes of an input file, read when its request is built (never kept in a TaskSpec)."""
    with open_regular(path) as handle:
        return handle.read()


class InputChanged(Exception):
    """An input file's bytes are no longer those its task was checked and named with."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


def checked_reader(inputs: Iterable[InputInfo]) -> Callable[[Path], bytes]:
    """`read_file` for one task's request: each file it reads must still hold the bytes it was inspected
    with (their sha256 is part of the task's id). A file replaced between the task's check and its
    request (a run builds its next tasks ahead of sending them) raises InputChanged: those bytes were
    never checked, and the answer would be saved under the other file's id."""
    digests = {info.path: info.digest for info in inputs if info.digest}

    def read(path: Path) -> bytes:
        data = read_file(path)
        expected = digests.get(path)
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise InputChanged(path)
        return data

    return read
