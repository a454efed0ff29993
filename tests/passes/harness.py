"""The shared pass test harness: every transforming pass gets the same checks from here.

``check_pass`` runs a pass on a clone of ``before`` and asserts:
1. ``modified`` is honest (structural fingerprint before/after);
2. the verifier accepts the result;
3. the result matches ``expect`` (IR text, compared after a parse/print round trip, or a callable);
4. onnxruntime computes the same numbers for both graphs on seeded random inputs, within the
   per-dtype tolerances (or the tolerance a lossy pass declares);
5. a second run reports ``modified=False`` and changes nothing;
6. no constant array of the input graph was written into.
``check_not_fired`` asserts a pass left a graph alone and said why in a Note.

The harness is installed with effarch (``compiler.debugging.pass_checks``), so that ``effarch
check-pass`` and the tests of passes written outside this repository run exactly the same checks.
"""

from compiler.debugging.pass_checks import check_not_fired, check_pass, payload

__all__ = ["check_not_fired", "check_pass", "payload"]
