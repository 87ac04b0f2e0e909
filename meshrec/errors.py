"""The one exception type that user-facing commands turn into a one-line message."""


class MeshrecError(Exception):
    """Bad input from the user (file, config, option): reported as one line, exit code 2."""
