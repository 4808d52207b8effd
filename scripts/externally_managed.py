"""Exit 0 when pip may not install into the Python running this (PEP 668: an EXTERNALLY-MANAGED
file in its stdlib directory, outside a virtual environment: Debian 12's own python3), else 1;
scripts/setup.sh then installs into a virtual environment, .venv/. Usage: externally_managed.py
[STDLIB_DIR]. Standard library only: it runs before anything is installed."""

import os
import sys
import sysconfig


def externally_managed(stdlib: str | None = None) -> bool:
    if sys.prefix != sys.base_prefix:  # a virtual environment: pip installs into it
        return False
    return os.path.isfile(os.path.join(stdlib or sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))


if __name__ == "__main__":
    sys.exit(0 if externally_managed(*sys.argv[1:2]) else 1)
