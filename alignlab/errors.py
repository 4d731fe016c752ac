"""Errors a user can act on: each names the file, row or config key at fault, and the CLI prints it in one line."""


class AlignlabError(Exception):
    """Base class; the entry points turn these into a one-line message and exit code 2."""


class DataError(AlignlabError):
    """A dataset that cannot be used: missing file or column, malformed rows past the allowed fraction."""


class ConfigError(AlignlabError, ValueError):
    """A config value that cannot work, named by its dotted key."""


class JudgeReplyError(AlignlabError):
    """A judge's reply for a batch that cannot be used (e.g. unreadable output): costs that batch's pairs, counted as
    judge failures, not the run. Judges raise it; the online datamodule catches it."""


class JudgeFailure(AlignlabError):
    """The annotator failed on more than the allowed share of recent pairs (``data.max_judge_failure_fraction``):
    training on what is left would silently train on almost nothing."""


class TrainingFailure(AlignlabError):
    """A run that ended without the training it was asked for (fewer updates than
    ``objective.module.min_updates``, every batch's pairs dropped)."""
