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


def gpu_index(device: str) -> int | None:
    """The GPU that a device name asks for ('cuda' is GPU 0, 'cuda:N' GPU N; None for 'auto' and 'cpu'): the one
    rule for --device on the torch and onnxruntime paths; any other name is refused (a typo such as 'gpu' ran on the
    CPU unsaid)."""
    if device in ("auto", "cpu"):
        return None
    kind, _, index = device.partition(":")
    if kind == "cuda" and (not index or index.isdigit()):
        return int(index or 0)
    raise ConfigError(f"unknown device '{device}' (choose auto, cpu, cuda or cuda:N)")
