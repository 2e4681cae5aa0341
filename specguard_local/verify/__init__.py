"""Everything that decides about a drafted step, in one place.

    grounding    the paper's ABGV: attention rollout over the prefix I, in O(step × context)
    signals      LPBV + ABGV → r = β·l̃ + (1-β)·g̃ under the pair's `Profile`; the draft-side state
                 (`Grounding`); the self-consistency selector
    probe        a hidden-state probe (SemanticSpec) trained on the study's outcome labels
    stage        the verification stage: the target's one pass over a stretch (`read_step`), a verifier and its
                 parts run cheapest first (`check`), token-level salvage (`agreement`) and SD's rejection rule
    calibration  the pair's normalisation bounds and each verifier's risk-calibrated τ, from a study

A decoder (`decoders.specguard`) drafts, asks `check`, and keeps, salvages or rewrites; nothing here decodes on
its own except through the target's pass it is handed.
"""
