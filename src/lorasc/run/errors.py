"""The errors a user can fix, each printed by the CLI as one line that names the problem and the fix."""


class CliError(Exception):
    """A bad command line, settings file or run folder."""


class DataError(ValueError):
    """Bad user data (a data file, a label, a split that leaves nothing to train on)."""


class ModelError(ValueError):
    """A model folder that cannot be used: missing, damaged, or not what the settings need."""
