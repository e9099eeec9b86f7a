"""User-facing errors: one line that names the problem and the fix."""


class HarnessError(Exception):
    """A problem with the user's input or environment, reported as one line, exit code 2."""

    exit_code = 2
    reported = False  # said already (by this process or, with several processes, by the main one): exit quietly


def first_line(exc: BaseException | str) -> str:
    """The first non-blank line of an error's message (its type name when the message is empty)."""
    lines = (line.strip() for line in str(exc).splitlines())
    fallback = exc if isinstance(exc, str) else type(exc).__name__
    return next((line for line in lines if line), fallback)
