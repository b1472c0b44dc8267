"""Logging for commands and runs: one format, the transformers library kept quiet."""

from __future__ import annotations

import logging


def setup_logging(verbose: bool) -> None:
    """INFO (``verbose``) or WARNING and up, as ``HH:MM:SS LEVEL name: message`` on stderr."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if verbose else logging.WARNING, force=True)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
