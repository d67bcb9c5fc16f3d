"""`python -m cluster` is the zeroscale command."""

import sys

from cluster.cli import main

sys.exit(main())
