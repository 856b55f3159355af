"""The errors a user can fix, each printed by the CLI as one line that names the problem and the fix."""


class CliError(Exception):
    """A bad command line, settings file or run folder."""


class DataError(ValueError):
    """Bad user data (a data file, a label, a split that leaves nothing to train on)."""


class ModelError(ValueError):
    """A model folder that cannot be used: missing, damaged, or not what the settings need."""


def refuse_special_file(path, error: type[Exception], fix: str) -> None:
    """Only regular files are read: reading a pipe blocks until a writer comes, a device may never end."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise error(f"{path} is not a regular file (a pipe, socket or device); {fix}")
