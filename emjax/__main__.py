"""`python -m emjax ...` is the `emjax` command."""

import sys

from emjax.cli import main

sys.exit(main())
