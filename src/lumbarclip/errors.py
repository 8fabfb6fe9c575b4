"""The one exception type for bad user input: the CLI turns it into a one-line error, exit 2."""


class InputError(ValueError):
    """Bad input from the user (a file, a row, an option); the message names it and says why."""
