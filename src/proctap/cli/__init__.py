"""The command line: `main` dispatches to one module per subcommand; `common` holds what they share."""

from .main import main

__all__ = ["main"]
