"""effarch's passes, one module per pass. Importing this package registers them all."""

from passes import dead_code, fold_constants

__all__ = ["dead_code", "fold_constants"]
