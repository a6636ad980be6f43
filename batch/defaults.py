"""Default settings, in a module light enough for the command line to read before it imports the HTTP
stack (a second run on a locked directory must give up within a second). Each is written once: the
flags' help, `batch.Options` and the engine's own settings all read it from here."""

from __future__ import annotations

DEFAULT_BASE_URL = "https://genaiapi.cloudsway.net/v1/ai"
DEFAULT_TIMEOUT = 600.0  # one attempt, seconds
DEFAULT_MAX_ANSWER_MB = 64.0  # ten 1536x1024 PNGs in base64 are about 45 MB
DEFAULT_MAX_BODY = int(DEFAULT_MAX_ANSWER_MB * 2**20)
DEFAULT_CONCURRENCY = 4
DEFAULT_MAX_CONCURRENCY = 256  # the ceiling of --concurrency auto
MAX_IN_FLIGHT = 10_000  # --concurrency at most: 100,000 took 850 MB and half a minute to start
DEFAULT_OUTAGE_LIMIT = 900.0  # seconds the service may keep failing before a run stops (exit 69)
DEFAULT_GRACE = 30.0  # seconds requests in flight get after SIGINT/SIGTERM/SIGHUP
DEFAULT_MAX_ATTEMPTS = 6
DOWNLOADS_AT_ONCE = 4  # links of one answer fetched side by side (the API makes at most 10 images)
DEFAULT_TASK_DEADLINE = 1800.0  # no retry of a task starts later than this after its first attempt
DEFAULT_BACKOFF = 1.0
DEFAULT_BACKOFF_MAX = 60.0
DEFAULT_SYNC_INTERVAL = 0.1  # seconds between two fsyncs of the journals
DEFAULT_LOG_EVERY = 60.0  # seconds between two status lines of a run without a progress bar
DEFAULT_SHARD_SIZE = 1000  # tasks per shard of `submit`
DEFAULT_HEARTBEAT_TIMEOUT = 60.0  # seconds without a worker's heartbeat before its shard is taken over
