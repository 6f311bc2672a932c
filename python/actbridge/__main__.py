"""``python -m actbridge`` (and ``torchrun -m actbridge``): the command line."""

import sys

from actbridge.cli import main

sys.exit(main())
