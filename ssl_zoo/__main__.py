"""``python -m ssl_zoo`` (also what ``torchrun -m ssl_zoo train ...`` runs)."""

import sys

from ssl_zoo.cli import main

sys.exit(main())
