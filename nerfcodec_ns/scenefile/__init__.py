"""Stage 3, the scene file (``SCENE.nfc``): its format, writing it from a trained run and decoding
it back into a nerfstudio run.

* the format, torch-free (tested): :mod:`.header` (limits, ``BitstreamError``, the typed header),
  :mod:`.payload` (arrays, strings, LZMA, bit masks), :mod:`.container` (sections, CRCs, pack /
  unpack / read), :mod:`.cameras` (the poses section and the cameras rebuilt from it);
* :mod:`.export`: trained run -> file (``ExportError``; the ``ns-export nerfcodec-bitstream`` graft);
* :mod:`.decode`: file -> planes, MLP, grid -> run folder (``DecodeError``);
* :mod:`.dataparser`: ``nerfcodec-decoded``, cameras from a scene file;
* :mod:`.fuzz`: structured fuzzing of the decoder.

This ``__init__`` imports nothing, so that the format modules load without torch.
"""
