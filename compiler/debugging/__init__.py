"""Tools that show what the passes did: per-pass impact, numbers after every pass, bisection to the
pass that broke them, reproducers, and node-level diffs that follow provenance."""
