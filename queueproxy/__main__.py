"""`queue-proxy` / `python -m queueproxy`: the sidecar, configured by Knative's environment variables.

``--standby`` starts it ahead of its pod and reads the environment from standard input instead
(queueproxy.standby).
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    args = sys.argv[1:]
    if args == ["--standby"]:
        from queueproxy.standby import main as standby

        sys.exit(standby())
    if args:
        print("usage: queue-proxy [--standby]  (configured by Knative's variables)", file=sys.stderr)
        sys.exit(2)
    from queueproxy.app import run

    sys.exit(run(os.environ))


if __name__ == "__main__":
    main()
