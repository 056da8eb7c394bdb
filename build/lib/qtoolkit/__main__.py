import sys

from qtoolkit.cli import main

sys.exit(main())
