"""What every script shares: one error style, `error: <what is wrong>: <how to fix it>`, exit 2.

`--debug` (any script) shows the traceback instead; it is taken off the arguments before the
script parses them.
"""

from __future__ import annotations

import sys
import traceback

from .errors import ParcnetError


def run_main(main) -> None:
    """Run a script's main(): a ParcnetError, or a file the system refused (permissions, a file
    where a folder should be), prints one line and exits with status 2."""
    debug = "--debug" in sys.argv[1:]
    if debug:
        sys.argv = [sys.argv[0], *(a for a in sys.argv[1:] if a != "--debug")]
    try:
        status = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (ParcnetError, OSError) as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {describe(exc)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status or 0)


def describe(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot use {exc.filename}: {exc.strerror}: check the path and its permissions"
    return str(exc)
