"""The one exception type users see.

Every failure caused by input the user controls (a file, a folder, an option, a diverging run)
raises :class:`ManidpError` with a single line that names the file or option and says what to do.
The command line prints that line and exits with status 2; it never shows a traceback for these.
"""


class ManidpError(Exception):
    """A user-facing error: one line naming the file or option and the fix."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`ManidpError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ManidpError(message)
