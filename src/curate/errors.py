"""The one exception type users see: a clear, one-line message and exit code 2."""


class CurateError(Exception):
    """Bad input (params, source files, stage inputs) that the user must fix.

    The CLI prints ``curate: error: <message>`` on one line, without a traceback,
    and exits with code 2. The message names the file, key or value at fault.
    """

    exit_code = 2
