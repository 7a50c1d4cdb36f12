"""Z-Forcing: the model (``model``), the loop's deferred-gradient linear map (``cell``), the
plain loop with backpropagation through time written out (``recurrence``) and the
step-by-step reference the fast paths are tested against (``reference``)."""

from zf_lightning.models.zforcing.model import PosteriorPass, ZForcing

__all__ = ["PosteriorPass", "ZForcing"]
