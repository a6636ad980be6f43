"""maas-batch: resumable, unattended batches against the MaaS generative API."""

from __future__ import annotations

__version__ = "0.1.0"
