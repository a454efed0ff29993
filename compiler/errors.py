"""User-facing errors. The CLI prints ``effarch: error: <message>`` for these and exits non-zero.

Every message is one line that names the problem and, where there is one, the fix:
``input 'x' has shape (1, 3, 32, 32) but the model expects (1, 3, 224, 224); pass an array of that shape``.
"""


class EffarchError(Exception):
    """An error caused by the user's input or environment, shown without a traceback."""


class UnsupportedOpsError(EffarchError):
    """The model uses operators effarch cannot handle; the message lists all of them at once."""


class PassError(EffarchError):
    """A pass failed; the message names it and the passes that ran before it."""
