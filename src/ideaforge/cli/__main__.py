import sys

from ideaforge.cli import main

sys.exit(main())
