"""Default settings, in a module light enough for the command line to read before it imports the HTTP
stack (a second run on a locked directory must give up within a second)."""

from __future__ import annotations

DEFAULT_BASE_URL = "https://genaiapi.cloudsway.net/v1/ai"
DEFAULT_TIMEOUT = 600.0  # one attempt, seconds
DEFAULT_MAX_BODY = 64 * 2**20  # ten 1536x1024 PNGs in base64 are about 45 MB
DEFAULT_CONCURRENCY = 4
DEFAULT_OUTAGE_LIMIT = 900.0  # seconds the service may keep failing before a run stops (exit 69)
DEFAULT_GRACE = 30.0  # seconds requests in flight get after SIGINT/SIGTERM
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_TASK_DEADLINE = 1800.0  # no retry of a task starts later than this after its first attempt
DEFAULT_BACKOFF = 1.0
DEFAULT_BACKOFF_MAX = 60.0
