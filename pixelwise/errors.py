"""pixelwise's own errors: their messages say what went wrong, where (the file, the key) and
what to do.

The command line prints a :class:`PixelwiseError` (and only that) as one line and exits 2; any
other exception is a bug or a library failure, and keeps its traceback (``--debug`` shows the
traceback of every error). The subclasses are also the built-in exception they stand for
(:class:`InputError` is a ``ValueError``), so code that catches those keeps working.
"""


class PixelwiseError(Exception):
    """An error meant for the user: its message names the file or key and the fix."""


class InputError(PixelwiseError, ValueError):
    """A value, an option, a recipe key or a file's content that pixelwise cannot use."""


class MissingFileError(PixelwiseError, FileNotFoundError):
    """A file or folder that was named does not exist, or is not the kind of file expected."""


class FolderGivenError(PixelwiseError, IsADirectoryError):
    """A folder was named where a file is expected; the message names the file to pass."""
