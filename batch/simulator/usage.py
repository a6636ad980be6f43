"""Token figures as the real services report them, close enough for a ledger to be checked against.

Images follow gpt-image-1's published rules: output tokens by size and quality; an input image costs
65 + 129 per 512 px tile after scaling it to fit in 1024x1024 (never upscaled). Text is one token per four
characters, rounded up. Chat follows Gemini: 258 tokens per input image, 1290 per output image.
"""

from __future__ import annotations

import math

# (size class, quality) -> output tokens of one image.
_OUTPUT_TOKENS = {
    ("square", "low"): 272,
    ("square", "medium"): 1056,
    ("square", "high"): 4160,
    ("oblong", "low"): 408,
    ("oblong", "medium"): 1584,
    ("oblong", "high"): 6240,
}
IMAGE_BASE_TOKENS = 65
IMAGE_TILE_TOKENS = 129
IMAGE_TILE_SIDE = 512
IMAGE_FIT_SIDE = 1024
CHAT_INPUT_IMAGE_TOKENS = 258
CHAT_OUTPUT_IMAGE_TOKENS = 1290


def text_tokens(text: str) -> int:
    """About four characters per token, rounded up."""
    return math.ceil(len(text) / 4)


def output_image_tokens(width: int, height: int, quality: str) -> int:
    """Tokens of one generated image; `auto` quality bills as medium."""
    size_class = "square" if width == height else "oblong"
    return _OUTPUT_TOKENS[(size_class, "medium" if quality == "auto" else quality)]


def input_image_tokens(width: int, height: int) -> int:
    """Tokens of one input image of an edit: 65 + 129 per 512 px tile once scaled to fit 1024x1024."""
    scale = min(1.0, IMAGE_FIT_SIDE / max(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    tiles = math.ceil(w / IMAGE_TILE_SIDE) * math.ceil(h / IMAGE_TILE_SIDE)
    return IMAGE_BASE_TOKENS + IMAGE_TILE_TOKENS * tiles


def image_usage(
    prompt: str, width: int, height: int, quality: str, n: int, input_sizes: list[tuple[int, int]]
) -> dict[str, object]:
    """The `usage` object of a generate or edit answer."""
    text = text_tokens(prompt)
    images = sum(input_image_tokens(w, h) for w, h in input_sizes)
    output = output_image_tokens(width, height, quality) * n
    return {
        "input_tokens": text + images,
        "output_tokens": output,
        "total_tokens": text + images + output,
        "input_tokens_details": {"image_tokens": images, "text_tokens": text},
    }


def chat_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The `usage` object of a chat answer."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
