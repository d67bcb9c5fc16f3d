"""`queue-proxy` / `python -m queueproxy`: the sidecar, configured by Knative's environment variables.

``--zygote`` starts the local runtime's fork server instead (queueproxy.zygote): it imports everything
once and forks one queue-proxy per pod, each configured by that pod's environment.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    args = sys.argv[1:]
    if args == ["--zygote"]:
        from queueproxy.zygote import main as zygote

        sys.exit(zygote())
    if args:
        print("usage: queue-proxy [--zygote]  (configured by Knative's variables)", file=sys.stderr)
        sys.exit(2)
    from queueproxy.app import run

    sys.exit(run(os.environ))


if __name__ == "__main__":
    main()
