"""Network building blocks that two or more methods share.

A network only one paper uses lives in that paper's package under :mod:`harmony.methods`; it moves here
when a second method needs it. Today: the latent-diffusion core (:mod:`harmony.nn.latent`), on which
DiffHarmony, R2R and the classifier-guided LDM build.
"""
