"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class RobustADError(Exception):
    """Base class of every error a user can cause and fix."""


class DataError(RobustADError):
    """A dataset, folder or image cannot be used."""


class ImageReadError(DataError):
    """One image file is unreadable, corrupt or truncated."""


class ConfigError(RobustADError):
    """A recipe or option is invalid."""


class ModelError(RobustADError):
    """A model file or run directory is missing, corrupt or of the wrong kind."""


class OverwriteError(RobustADError):
    """An output exists and --force was not given."""


class BusyError(RobustADError):
    """Another robust-ad process is writing the same folder."""


def counted(count: int, noun: str) -> str:
    """``count`` and ``noun``, plural unless the count is one: '1 image', '3 images'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
