"""User-facing errors. The CLI prints these as one line, without a traceback."""


class TandemError(Exception):
    """An error caused by the user's input (config, data, files), not by a bug in tandem."""


class ConfigError(TandemError):
    """A config field is unknown or has a bad value; the message names the field."""


class DataError(TandemError):
    """A data file or record is malformed; the message names the file and line."""


class TandemWarning(UserWarning):
    """Something the user should know that does not stop the run (rows skipped, a fallback);
    the CLI prints it as one line, ``tandem: warning: ...``."""
