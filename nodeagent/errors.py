"""The one exception type users see.

Every module raises a subclass of NodeagentError for problems a user can act on; the CLI
prints its message (which names the offending file, field, image or device) and exits
non-zero without a traceback. Messages must never contain secrets.
"""


class NodeagentError(Exception):
    """A problem the user can fix; str(error) says what and where."""

    exit_code = 1


class UsageError(NodeagentError):
    """Bad command-line or configuration input."""

    exit_code = 2
