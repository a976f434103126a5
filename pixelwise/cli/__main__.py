"""``python -m pixelwise.cli``, as ``torchrun -m pixelwise.cli train ...`` runs it."""
import sys

from pixelwise.cli import main

sys.exit(main())
