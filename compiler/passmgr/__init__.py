"""The pass manager's parts; import from ``compiler.pass_manager``, which re-exports the public API."""
