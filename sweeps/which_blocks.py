"""Which blocks to transfer? A Ray Tune sweep over block policies (reinit / frozen / tuned).

Run `python sweeps/which_blocks.py --help` for every option. With no arguments it runs the
default sweep: the seed CNN, source = clean handwritten digits, target = the held-out digits
with Gaussian input noise and 10 labels per class; surgical and prefix strategies, 3 seeds;
the report goes to runs/which_blocks/<timestamp>/.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_blockreuse.sweep.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
