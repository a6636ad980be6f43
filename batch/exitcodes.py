"""The exit codes of `maas-batch`: a public contract (cron jobs and pipelines test them). The numbers above
63 follow BSD's sysexits.h."""

EXIT_OK = 0  # every task succeeded (or had already)
EXIT_FAILED = 1  # some tasks failed
EXIT_BUDGET = 3  # --max-cost / --max-tokens reached; resumable
EXIT_DEADLINE = 4  # --deadline / --max-duration reached; resumable
EXIT_USAGE = 64  # bad command line
EXIT_DATAERR = 65  # the manifest (or an input file) is invalid
EXIT_UNAVAILABLE = 69  # quota exhausted, or the service stays down
EXIT_IOERR = 74  # the output directory cannot be written
EXIT_TEMPFAIL = 75  # another run holds DIR, or the run was interrupted; resumable
EXIT_NOPERM = 77  # the key was refused
EXIT_CONFIG = 78  # missing key or endpoint, unknown endpoint, no price for --max-cost
