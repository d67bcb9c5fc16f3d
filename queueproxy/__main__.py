"""`queue-proxy` / `python -m queueproxy`: the sidecar, configured by Knative's environment variables."""

from __future__ import annotations

import os
import sys

from queueproxy.app import run


def main() -> None:
    sys.exit(run(os.environ))


if __name__ == "__main__":
    main()
