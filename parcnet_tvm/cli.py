"""What every script shares: one-line errors for problems the user can fix."""

from __future__ import annotations

import sys

from .errors import ParcnetError


def run_main(main) -> None:
    """Run a script's main(); a ParcnetError prints one line and exits with status 2."""
    try:
        status = main()
    except ParcnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
