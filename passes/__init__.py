"""effarch's passes, one module per pass. Importing this package registers them all."""
