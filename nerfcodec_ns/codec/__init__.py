"""Stage 2, the plane codec: a CompressAI image codec adapted to the field's feature planes.

* :mod:`.settings`: :class:`~.settings.CodecConfig` (which backbone, how it is adapted);
* :mod:`.backbone`: backbone files (the frozen weights), loading, their SHA-256;
* :mod:`.quant`: fake quantization and the int8 decoder head;
* :mod:`.entropy`: bounded entropy decoding, reproducible convolutions;
* :mod:`.plane`: :class:`~.plane.PlaneCodec` (forward / compress / decompress, transmitted state);
* :mod:`.pretrain`: pre-training a backbone on images (``nerfcodec pretrain-codec`` / ``eval-codec``);
* :mod:`.ratecontrol`: the lambda controller behind ``codec-target-bytes``;
* ``weights/``: the embedded backbone files.

Builds on the field stage only; knows nothing of the scene file, the bench or the nerfstudio model.
Import the modules themselves; this ``__init__`` only re-exports ``CodecConfig`` (torch-free), for
the run configs (``config.yml``) written before the codec was split into modules, which name it
``nerfcodec_ns.codec.CodecConfig``.
"""

from nerfcodec_ns.codec.settings import CodecConfig

__all__ = ["CodecConfig"]
