"""The error the CLI prints without a traceback."""


class UsageError(Exception):
    """Bad input found before work starts; printed without a traceback, exit status 2."""
