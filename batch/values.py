"""Settings written as text, read the same by the command line and by `batch.Options`: durations,
deadlines, `--endpoint` and `--set` items. Plain functions, no argparse: the command line wraps them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from batch.errors import UsageError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds from `90s`, `45m`, `6h`, `1d`, `1h30m` or a plain number of seconds; ValueError if not."""
    parts = _DURATION.findall(text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s", "", text.strip().lower()):
        raise ValueError(f"not a duration (like 90s, 45m, 6h, 1d): {text!r}")
    seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise ValueError(f"must be longer than 0: {text!r}")
    return seconds


def parse_deadline(text: str, now: datetime | None = None) -> float:
    """Unix time from `HH:MM` (the next such time, local) or an ISO date and time (local unless it says);
    ValueError for anything else, or a time already past."""
    now = now or datetime.now()
    clock = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if clock:
        hour, minute = int(clock.group(1)), int(clock.group(2))
        if hour > 23 or minute > 59:
            raise ValueError(f"not a time of day: {text!r}")
        moment = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if moment <= now:
            moment += timedelta(days=1)
        return moment.timestamp()
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a time (like 07:00 or 2026-12-01T07:00): {text!r}") from None
    if moment.timestamp() <= now.timestamp():
        raise ValueError(f"{text!r} is already past")
    return moment.timestamp()


def parse_endpoints(items: Sequence[str]) -> dict[str, str]:
    """`--endpoint` items into {kind or model or "*": endpoint}."""
    chosen: dict[str, str] = {}
    for item in items:
        key, sep, endpoint = item.rpartition("=")
        endpoint = endpoint.strip()
        if not endpoint:
            raise UsageError(f"--endpoint needs an endpoint id, not {item!r}")
        if sep and not key.strip():
            raise UsageError(
                f"--endpoint KIND=ENDPOINT or MODEL=ENDPOINT needs the kind or model, not {item!r}"
            )
        chosen[key.strip() if sep else "*"] = endpoint
    return chosen


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`--set` items into {field: value} and {kind: {field: value}}; values read as YAML scalars, but
    for one with a `#` that YAML would read as a comment (`stop=###`, `user=team #3`), which is taken as
    written: what the shell passed is what is sent."""
    if not items:
        return {}
    import yaml  # on use, not at start-up: `maas-batch --help` (and a run without --set) does without it

    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set needs FIELD=VALUE, not {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        if "#" in text and not _holds_hash(value):  # a comment to YAML: what followed it was cut off
            value = text
        kind, dot, name = key.partition(".")
        if dot:
            overrides.setdefault(kind, {})[name] = value
        else:
            overrides[key] = value
    return overrides


def _holds_hash(value: Any) -> bool:
    """Whether a parsed value still holds a `#` somewhere (`["#", "END"]`): YAML read it as text."""
    if isinstance(value, str):
        return "#" in value
    if isinstance(value, list):
        return any(_holds_hash(item) for item in value)
    if isinstance(value, dict):
        return any(_holds_hash(key) or _holds_hash(item) for key, item in value.items())
    return False


def check_base_url(url: str) -> None:
    """ValueError unless `url` is a base URL every request can be built on: http(s), a host, no ?query or
    #fragment (a request's URL is the base's path and the endpoint's: what follows would be dropped, and
    could hold a secret, not repeated here), no user or password (aiohttp refuses every request that has
    them beside the Authorization header, and the URL is written into messages: the key belongs in
    MAAS_API_KEY). The message never repeats what could be a secret."""
    parts = urlsplit(url)
    shown = without_password(url, user=False)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the base URL must be an http(s) URL, not {shown!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"the base URL must not hold a ?query or #fragment ({shown} with one)")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"the base URL must not hold a user or password ({shown} with them); the key goes in MAAS_API_KEY"
        )
    try:
        parts.port  # noqa: B018 (read for its check: `host:99999` raises)
    except ValueError:
        raise ValueError(f"the port of the base URL {shown!r} is not a number from 0 to 65535") from None


REDIS_SCHEMES = ("redis", "rediss", "unix")  # what redis-py's from_url takes


def check_redis_url(url: str) -> None:
    """ValueError unless `url` is a Redis URL redis-py can open (redis://, rediss://, unix://); the message
    shows it without its password."""
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES or not (parts.netloc or parts.path):
        raise ValueError(
            f"a Redis URL must begin with redis://, rediss:// or unix://, not {without_password(url)!r} "
            "(e.g. redis://host:6379/0)"
        )
    try:
        parts.port  # noqa: B018 (read for its check: `host:notaport` raises)
    except ValueError:
        raise ValueError(f"the port of {without_password(url)!r} is not a number from 0 to 65535") from None


def without_password(url: str, user: bool = True) -> str:
    """The URL with no password (nor query or fragment, which may hold one; nor its user, if not `user`):
    safe to write down."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = (f"{parts.username}@" if parts.username and user else "") + host
    try:
        port: int | str | None = parts.port
    except ValueError:  # not a number (the URL is refused for it): shown as written
        port = parts.netloc.rpartition(":")[2]
    netloc += f":{port}" if port else ""
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class StoreUrl(str):
    """An output on an object store (s3://bucket/prefix), as given; a DIR is a Path."""


def output_location(text: str) -> StoreUrl | Path:
    """--out and the readers' DIR: a URL (anything with `://`) names a store (output.remote checks which
    ones are supported), anything else a local directory; so does fsspec's `file:///absolute/path` (a
    local directory, with every guarantee of one: lock, appends, renames). An empty one (`--out "$UNSET"`)
    is refused: it would be the current folder, whatever that is."""
    if not text.strip():
        raise ValueError("an empty path: name a directory (or . for this one)")
    if text.startswith("file://"):
        path = text[len("file://") :]
        if not path.startswith("/"):  # file://host/... names another machine's disk
            raise ValueError(f"{text}: give file:///absolute/path, or the path itself")
        return Path(path)
    if "://" in text:
        return StoreUrl(text)
    scheme, colon, rest = text.partition(":")
    if colon and scheme.lower() in _STORE_SCHEMES:  # s3:/bucket/x: a folder named "s3:", written in silence
        raise ValueError(f"{text}: a store's URL is {scheme}://{rest.lstrip('/')}")
    return Path(text)


# the object stores fsspec names (output.remote takes some of them): `s3:bucket` is no folder one means
_STORE_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"})
