"""Do the two scans have the same contrast? And what registration does when they do not.

The bundled network learnt mostly pairs of one contrast: on a T2 brought onto a T1 its prediction
is worse than the affine alone (Dice over brain structures 0.30 against 0.41 on the synthetic
whole-head pair of maps 19/20), while the per-pair optimisation that ``--model none`` runs, whose
similarity is the squared local NCC (blind to the sign of the local correlation), reaches 0.73
there against 0.76 for the default on the same anatomy in T1 (docs/WHOLE_HEAD.md).

So after the affine, on the model grid, the signed local NCC (window 9) of the two images inside
the fixed image's foreground, half a window away from its edge, tells them apart. Measured with
the bundled models: same-contrast T1 pairs at hand score 0.32-0.51 (the three aseg pairs 0.46-0.51,
four real whole-head pairs 0.32-0.44, a synthetic whole-head pair 0.48); T2, FLAIR and PD onto T1
-0.37 to 0.05 (synthetic) and 0.004 (the real 5.5 mm T2 onto a real T1); a 6.5 mm contrast T1 onto
a T1 0.11. Below ``DIFFERENT_BELOW`` the pair counts as two contrasts
(``--contrast auto``, the default): the network is skipped and the refinement starts from a zero
velocity with ``--model none``'s schedule, unless ``--refine`` and its options say otherwise.
``--contrast same`` / ``different`` decide without looking.
"""

from __future__ import annotations

import torch

from ..tensor.losses import mean_signed_local_ncc
from .loaded_model import DEFAULT_NONE_COARSE_FRACTION, DEFAULT_NONE_LEARNING_RATE, DEFAULT_NONE_REFINEMENT, DEFAULT_NONE_SMOOTHNESS, refinement_settings

CONTRAST_MODES = ("auto", "same", "different")
DIFFERENT_BELOW = 0.2
WINDOW = 9
FOREGROUND_ABOVE = 0.02  # of the fixed image on the model grid, scaled to [0, 1]


def contrast_decision(fixed_t: torch.Tensor, moving_t: torch.Tensor, mode: str = "auto") -> dict:
    """``{"mode", "signed_local_ncc", "different"}`` for two images on the model grid (``[1, 1, K, J, I]``)."""
    if mode not in CONTRAST_MODES:
        raise ValueError(f"contrast mode must be one of {CONTRAST_MODES}, got {mode!r}")
    report = {"mode": mode}
    if mode == "auto":
        # inside the fixed image's foreground, away from its edge by half a window: at the edge of a
        # stripped brain both images rise from 0 whatever their contrasts
        background = (fixed_t <= FOREGROUND_ABOVE).float()
        interior = torch.nn.functional.max_pool3d(background, WINDOW, stride=1, padding=WINDOW // 2) == 0
        score = mean_signed_local_ncc(moving_t, fixed_t, WINDOW, interior if bool(interior.any()) else None)
        report["signed_local_ncc"] = round(score, 4)
        report["different"] = score < DIFFERENT_BELOW
    else:
        report["different"] = mode == "different"
    return report


def optimisation_refinement(options) -> dict:
    """The refinement of a pair of two contrasts: ``--model none``'s schedule where the options do not set one."""
    from ..checkpoint import ModelConfig

    config = ModelConfig(default_refine_iterations=DEFAULT_NONE_REFINEMENT, default_refine_smoothness=DEFAULT_NONE_SMOOTHNESS,
                         default_refine_learning_rate=DEFAULT_NONE_LEARNING_RATE, default_refine_coarse_fraction=DEFAULT_NONE_COARSE_FRACTION)
    return refinement_settings(options, config, False, "two contrasts")
