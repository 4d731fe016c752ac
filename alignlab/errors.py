"""Errors a user can act on: each names the file, row or config key at fault, and the CLI prints it in one line."""


class AlignlabError(Exception):
    """Base class; the entry points turn these into a one-line message and exit code 2."""


class DataError(AlignlabError):
    """A dataset that cannot be used: missing file or column, malformed rows past the allowed fraction."""


class ConfigError(AlignlabError, ValueError):
    """A config value that cannot work, named by its dotted key."""
