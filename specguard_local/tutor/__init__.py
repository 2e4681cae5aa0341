"""The offline tutor's check of a student's own solution (`specguard-local check`, `/v1/check`, the page's tab).

    check        the decision per step, its reason and the hint (`check_solution`)
    provenance   where a step's numbers come from
    reference    the target's own solutions of the question (in words; as a program, read but never run)

The exact arithmetic of a written step is `specguard_local.arithmetic` (SpecGuard's `arithmetic` verifier reads it
too).
"""
