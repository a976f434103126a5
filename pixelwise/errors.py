"""The base of pixelwise's own errors whose message says what went wrong and what to do.

The command line prints such an error (and ``ValueError`` / ``OSError``, which pixelwise raises
for bad input with the same care) as one line; any other exception is a bug or a library
failure, and keeps its traceback.
"""


class PixelwiseError(Exception):
    """An error meant for the user: its message names the file or key and the fix."""
