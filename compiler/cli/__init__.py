"""The ``effarch`` command line: ``main`` builds the parser from ``commands``, one module per command,
and turns every user error into one line; ``common`` holds what several commands share."""
