"""The one exception type for problems a user can fix (bad input, missing tool)."""


class ParcnetError(Exception):
    """A clear, user-facing error: the message names the problem and the fix.

    Scripts print it as one line and exit with status 2, without a traceback.
    """
