"""nerfcodec_ns: NeRFCodec (Li et al., CVPR 2024) as a nerfstudio plugin.

Importing the package is cheap (no compressai) and makes nerfstudio 1.1.5 checkpoints loadable
under torch >= 2.6, see :mod:`nerfcodec_ns.compat`.
"""

from nerfcodec_ns.compat import register_checkpoint_safe_globals

__version__ = "0.1.0"

register_checkpoint_safe_globals()
