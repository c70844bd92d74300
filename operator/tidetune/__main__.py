import sys

from tidetune.cli import main

sys.exit(main())
