"""``python -m actbridge.cli``."""

import sys

from actbridge.cli.commands import main

sys.exit(main())
