"""scanpixd: a local photo library index that lives beside the photos."""

import os

# One BLAS thread unless the user says otherwise.  This process's matrix work is small (a
# query's text tower, a face's distances): OpenBLAS's helper threads gain nothing there
# and their spin-waiting cost a text query 5x its CPU on two busy cores.  It must be set
# before numpy loads, which is why it is here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
