"""`python -m localai_operator …` runs the `localai-operator` command."""

import sys

from localai_operator.cli import main

sys.exit(main())
