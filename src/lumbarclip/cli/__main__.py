"""`python -m lumbarclip.cli` runs the `lumbarclip` command."""

import sys

from lumbarclip.cli import main

sys.exit(main())
