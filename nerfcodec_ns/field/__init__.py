"""Stage 1, the radiance field: the tri-plane field (:mod:`.field`), the occupancy-grid sampler
(:mod:`.sampler`) and packed volume rendering (:mod:`.rendering`).

Imports nothing from the later stages (codec, scene file, bench). This ``__init__`` imports nothing:
import the modules themselves.
"""
