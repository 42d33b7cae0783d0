"""Bad input a user can fix: a file, a config value, a prompt, a checkpoint.

The message of each of these says what was wrong and how to fix it, so the command line
prints it alone, without a traceback (``seqmodels.cli.main``). From Python they are ordinary
``ValueError`` and ``FileNotFoundError`` instances.
"""


class InputError(Exception):
    """Something the user gave is wrong; the message says what and how to fix it."""


class InvalidInputError(InputError, ValueError):
    """A value, file content or prompt that cannot be used."""


class MissingInputError(InputError, FileNotFoundError):
    """A file or data set that is not where the user said (or where the default points)."""
