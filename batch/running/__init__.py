"""The run phase: the job, dispatch, one attempt, the client, retries, limits, health, budget, prices.

Not `batch/run/`: `batch.run` is the library's function, and a sub-package of that name would hide it."""
