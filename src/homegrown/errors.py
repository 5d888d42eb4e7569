"""One exception type for user errors, so the CLI can print a single line and exit 2 instead of a traceback."""


class HomegrownError(Exception):
    """A mistake the user can fix (missing file, unknown preset, mismatched checkpoint); the message says how."""
