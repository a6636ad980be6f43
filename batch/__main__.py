"""`python -m batch` is the `maas-batch` command."""

from batch.cli import command

command()
