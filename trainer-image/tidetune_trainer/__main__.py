"""``python -m tidetune_trainer``: the per-rank trainer entry point (see ``main``)."""

import sys

from tidetune_trainer.main import main

sys.exit(main())
