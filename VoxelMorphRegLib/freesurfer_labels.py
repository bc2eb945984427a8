"""FreeSurfer label IDs the training recipe relies on: which are brain structures, and how bright
each one is in a T1-weighted image. Plain data, imported by the training pipeline; the tensor
code receives these as arguments and knows nothing of FreeSurfer.

The T1 intensities are typical values of FreeSurfer's ``norm.mgz`` (white matter normalised to
110 of 255) rescaled to [0, 1] by the white matter; they are approximate on purpose: synthesis
adds a random offset per structure, a random gamma, a bias field, blur and noise around them.
"""

from __future__ import annotations

# Brain structures of FreeSurfer's aseg that whole-head label maps share with skull-stripped
# subjects. Dice in training and validation is taken over these only (never skull, skin, eyes...).
BRAIN_LABELS = (
    2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 26, 28, 31,  # left hemisphere, 3rd/4th ventricle, brainstem
    41, 42, 43, 44, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60, 63,  # right hemisphere
)

# Extra-cerebral CSF: part of the whole head, removed with the skull in skull-stripped images.
EXTRA_CEREBRAL_CSF = 24

WHITE, GREY, CSF = 1.0, 0.62, 0.18
T1_INTENSITY = {
    2: WHITE, 41: WHITE,  # cerebral white matter
    3: GREY, 42: GREY,  # cerebral cortex
    4: CSF, 43: CSF, 5: CSF, 44: CSF, 14: CSF, 15: CSF, 24: CSF,  # ventricles, CSF
    7: 0.88, 46: 0.88,  # cerebellum white matter
    8: 0.58, 47: 0.58,  # cerebellum cortex
    10: 0.80, 49: 0.80,  # thalamus
    11: 0.68, 50: 0.68,  # caudate
    12: 0.74, 51: 0.74,  # putamen
    13: 0.86, 52: 0.86,  # pallidum
    16: 0.86,  # brainstem
    17: 0.62, 53: 0.62,  # hippocampus
    18: 0.64, 54: 0.64,  # amygdala
    26: 0.66, 58: 0.66,  # accumbens
    28: 0.84, 60: 0.84,  # ventral DC
    31: 0.45, 63: 0.45,  # choroid plexus
    30: 0.5, 62: 0.5, 72: CSF, 77: 0.8, 85: 0.7,  # vessels, 5th ventricle, WM hypointensities, optic chiasm
}


def brain_labels_in(values) -> list[int]:
    """The brain structures among ``values`` (any iterable of label IDs), sorted."""
    brain = set(BRAIN_LABELS)
    return sorted(int(v) for v in values if int(v) in brain)
