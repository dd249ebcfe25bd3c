class UsageError(Exception):
    """Bad input from the user: the CLI prints one line and exits with code 2."""


class ConfigError(UsageError, ValueError):
    """A method's config rejected by posttrain itself (a trainer's own check): one line and exit 2 like any
    ``UsageError``. A ``ValueError`` that is not a ``ConfigError`` is a bug and keeps its traceback."""
