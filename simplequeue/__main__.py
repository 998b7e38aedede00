"""`python -m simplequeue` is the `simplequeue` command."""

import sys

from simplequeue.cli import main

sys.exit(main())
