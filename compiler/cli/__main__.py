"""``python -m compiler.cli ...`` runs the command line, as the ``effarch`` script does."""

import sys

from compiler.cli.main import main

sys.exit(main())
