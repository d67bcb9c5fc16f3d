"""`activator` / `python -m activator`: the gateway + activator process (backends resolved by cluster/)."""

from __future__ import annotations

import sys

from cluster.gateway_app import main as _main


def main() -> None:
    sys.exit(_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
