"""The commands of ``effarch``, one module each; adding a command means adding a module here.

A module defines ``register(sub)``, which adds one subparser with ``set_defaults(func=...)``;
``func(args) -> int`` returns the exit status and raises ``EffarchError`` for user errors (the CLI
turns it into one line). Keep heavy imports inside ``func`` so that ``effarch --help`` stays fast.
"""
