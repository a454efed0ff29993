"""Everything TVM: lowering to Relax, per-target builds, artifacts, runtime loading."""
