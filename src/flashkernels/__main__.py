"""``python -m flashkernels``: the same command line as the ``flashkernels`` script."""
import sys

from .cli import main

sys.exit(main())
