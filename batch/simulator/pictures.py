"""The pictures of an answer, as the wire carries them: rendered, broken by a content fault, or shaped.

Blocking CPU work (rendering, base64, hashing an upload): the server calls these through
`asyncio.to_thread`. Kept apart from the routing in `server.py` so that each stays small.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping

from . import faults, shapes
from .chat import ChatRequest
from .config import SimConfig
from .exchange import Exchange, b64_item, image_answer_body
from .files import FILES_PATH, LINKS_PATH, FileStore
from .image_request import ImageRequest
from .images import EditSource, ImageFactory, ImageSpec, bomb_png, not_an_image

_CHAT_IMAGE_PREFIX = "data:image/png;base64,"


def image_specs(parsed: ImageRequest, source: EditSource | None) -> list[ImageSpec]:
    """What the images of an image request look like, one spec each. An edit's source is hashed here (25 MB:
    its callers run off the loop)."""
    digest = source.digest() if source is not None else None
    return [
        ImageSpec(
            parsed.prompt,
            parsed.width,
            parsed.height,
            parsed.output_format,
            parsed.compression,
            parsed.transparent,
            index,
            digest,
        )
        for index in range(parsed.n)
    ]


class Pictures:
    """One server's image factory, its fault images and its served files."""

    def __init__(self, config: SimConfig, files: FileStore) -> None:
        self._answers = config.answers & shapes.IMAGE_SHAPES
        self._images = ImageFactory(mode=config.image_mode, seed=config.seed)
        self._bomb = base64.b64encode(bomb_png())
        self._files = files

    def _broken(self, fault: str | None, n: int) -> list[bytes] | None:
        """The base64 'images' of a content fault (None for no_data)."""
        if fault == "no_data":
            return None
        if fault == "bad_base64":
            return [faults.NOT_BASE64.encode()] * n
        if fault == "bad_image":
            return [base64.b64encode(not_an_image())] * n
        assert fault == "bomb"
        return [self._bomb] * n

    def image_body(
        self,
        parsed: ImageRequest,
        source: EditSource | None,
        usage: Mapping[str, object],
        ex: Exchange,
        origin: str,
        api_origin: str = "",
    ) -> bytes:
        """The whole body of a generate or edit answer; `origin` is where url items point (`api_origin`,
        the API's own, for `url_redirect`'s links)."""
        if ex.fault in shapes.CONTENT_FAULTS:
            broken = self._broken(ex.fault, parsed.n)
            items = None if broken is None else [b64_item(image) for image in broken]
            return image_answer_body(int(time.time()), items, usage)
        images = self._images.render_many(image_specs(parsed, source), source)
        if not self._answers:
            return image_answer_body(int(time.time()), [b64_item(image) for image in images], usage)
        ex.shapes = shapes.ordered(self._answers)
        flaky = "url_flaky" in self._answers

        def store(index: int, image: bytes) -> str:
            name = f"{ex.serial}-{index}"
            if "url_lost" in self._answers and index == parsed.n - 1:  # a link to no file: 404
                return origin + f"{FILES_PATH}/{name}-lost.{parsed.output_format}"
            path = self._files.add(name, base64.b64decode(image), parsed.output_format, flaky=flaky)
            if "url_redirect" in self._answers:  # the API's own link, answering 302 to the file
                return api_origin + LINKS_PATH + path.removeprefix(FILES_PATH)
            return origin + path

        items = shapes.image_items(images, self._answers, parsed.output_format, parsed.prompt, store)
        return image_answer_body(int(time.time()), items, usage)

    def image_events(
        self, parsed: ImageRequest, source: EditSource | None, usage: Mapping[str, object]
    ) -> list[str]:
        """The answer as OpenAI's image stream writes it: an `image_generation.completed` event per image,
        the usage on the last."""
        specs = image_specs(parsed, source)
        created = int(time.time())
        events = []
        for index, image in enumerate(self._images.render_many(specs, source)):
            event: dict[str, object] = {
                "type": "image_generation.completed",
                "b64_json": image.decode(),
                "created_at": created,
                "size": f"{parsed.width}x{parsed.height}",
                "quality": parsed.quality,
                "background": parsed.background,
                "output_format": parsed.output_format,
            }
            if index == parsed.n - 1:
                event["usage"] = dict(usage)
            events.append(json.dumps(event))
        return events

    def chat_image_urls(self, parsed: ChatRequest, fault: str | None) -> list[str]:
        """The picture of each choice of an image model, as a data URL."""
        if fault == "bad_base64":
            return [_CHAT_IMAGE_PREFIX + faults.NOT_BASE64] * parsed.n
        if fault in ("bad_image", "bomb"):
            return [_CHAT_IMAGE_PREFIX + image.decode() for image in self._broken(fault, parsed.n) or []]
        prompt = parsed.last_user_text or "(no text)"
        specs = [ImageSpec(prompt, 1024, 1024, "png", 100, False, index) for index in range(parsed.n)]
        return [_CHAT_IMAGE_PREFIX + image.decode() for image in self._images.render_many(specs)]
