"""`python -m keras_blockreuse.sweep`: the which-blocks sweep's command line
(`sweeps/which_blocks.py`), from any folder; the resume command it prints names it so."""

import sys

from keras_blockreuse.sweep.run import main

sys.exit(main())
