"""The one exception type for problems a user can fix, and how entry points report it.

Every error a user can cause (a wrong folder, a bad config value, a corrupt or untrusted file) is
raised as `LeafnetError` with a message that names the thing and the fix. Entry points wrap their
main function in `cli_errors`, which turns it into one line on stderr and exit code 2, never a
traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)
EXIT_TERMINATED = 143  # SIGTERM, e.g. a cluster pre-empting the job


class LeafnetError(Exception):
    """A problem the user can fix. The message names the thing and the fix, on one line."""


def fail(message: str, code: int = EXIT_USER_ERROR) -> None:
    """Print `message` as one line on stderr and exit with `code`."""
    line = f"leafnet: error: {' '.join(str(message).split())}"
    # A file name that is not valid UTF-8 (kept as surrogates) is shown escaped, not a crash.
    line = line.encode("utf-8", "backslashreplace").decode("utf-8")
    print(line, file=sys.stderr, flush=True)
    sys.exit(code)


def cli_errors(fn: F) -> F:
    """Run `fn`, turning a `LeafnetError` into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LeafnetError as err:
            fail(str(err))
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)

    return wrapper  # type: ignore[return-value]
