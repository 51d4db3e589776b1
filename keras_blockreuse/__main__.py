"""`python -m keras_blockreuse`: the `keras-blockreuse` command line."""

import sys

from keras_blockreuse.cli import main

sys.exit(main())
