"""Subcommands of ``effarch`` contributed by their own modules.

A module here defines ``register(sub)`` that adds one subparser with ``set_defaults(func=...)``;
``func(args) -> int`` raises ``EffarchError`` for user errors (the CLI turns it into one line).
Keep heavy imports inside ``func`` so that ``effarch --help`` stays fast.
"""
