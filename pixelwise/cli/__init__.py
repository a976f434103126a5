"""The ``pixelwise`` command line: :func:`main` parses the arguments (:mod:`~pixelwise.cli.parser`)
and runs the command (:mod:`~pixelwise.cli.commands`)."""
from __future__ import annotations

from typing import Sequence

from pixelwise.cli.commands import console
from pixelwise.cli.parser import build_parser
from pixelwise.errors import PixelwiseError
from pixelwise.runtimes.threads import set_threads

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pixelwise`` console script.

    Errors meant for the user (:class:`~pixelwise.errors.PixelwiseError`: bad input, a missing
    file, a diverged run, their messages say what to do) print as one line and exit 2; anything
    else is a bug or a library failure and keeps its traceback. ``--debug`` shows the traceback
    of every error.
    """

    args = build_parser().parse_args(argv)
    try:
        set_threads(args.threads)
        return args.run(args)
    except PixelwiseError as error:
        if args.debug:
            raise
        # markup off: messages quote lists like ['widht'], which rich would read as style tags
        console.print(f"error: {error}", style="bold red", markup=False, highlight=False)
        return 2

