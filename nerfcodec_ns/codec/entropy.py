"""Entropy decoding that a damaged or hostile string cannot derail, and reproducible convolutions.

CompressAI's rANS decoder has no end-of-buffer check; :func:`bounded_decompress` decodes from a
provably sufficient zero pad (:func:`rans_pad_bytes`) and accepts only strings that re-encode to the
same bytes. :func:`reproducible_convolutions` makes encoder and decoder compute the same ``h_s``
output whatever the thread setting.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn


@contextlib.contextmanager
def reproducible_convolutions():
    """Within the block, CPU ops run on one thread.

    oneDNN's convolution results depend on the number of threads (differences of ~1e-8 measured here
    between 1, 2 and 4 threads). The entropy coder needs exactly the same ``h_s`` output at the
    encoder and the decoder, and a decoded scene must be the same whatever the thread setting, so
    coding and eval-mode decoding run single-threaded. (PyTorch's native kernels are also
    thread-count invariant, but 2x slower here single-threaded and no faster with 2 threads: the
    synthesis of a 256 x 256 level takes 0.10 s with oneDNN on one thread, 0.20 s native.)
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

#: Largest magnitude of a decoded symbol (y x gain, rounded): far above what a latent can take (the
#: gain is at most 256), far below where CompressAI's bypass coder overflows (2^30).
MAX_SYMBOL = 1 << 24


def rans_pad_bytes(num_symbols: int, string_bytes: int) -> int:
    """Zero bytes appended to a string before CompressAI's rANS decoder reads it.

    CompressAI's decoder (``RansDecoder::decode_with_indexes``, 64-bit state, 32-bit words, 4-bit
    bypass chunks) has no end-of-buffer check: a short or damaged string makes it read past its input.
    Its reads are bounded, though: 2 words to start, at most 1 per symbol, and at most 1 per bypass
    chunk, and the bypass chunks of a damaged string are bounded by the symbols and the string's own
    bits (docs/bitstream.md, "Bounded entropy decoding", has the derivation). This is that bound in
    bytes, so the decoder never leaves the padded buffer, whatever the string holds.
    """
    return 392 * int(num_symbols) + 48 * int(string_bytes) + 256


def bounded_decompress(entropy_model: nn.Module, strings: Sequence[bytes], indexes: Tensor,
                       dtype: torch.dtype = torch.float, means: Optional[Tensor] = None) -> Tensor:
    """``EntropyModel.decompress`` that cannot read past a string, and accepts only canonical strings.

    Each string is decoded from a copy padded with :func:`rans_pad_bytes` zero bytes; the decoded
    symbols are then encoded again and must give back exactly the string (a truncated, extended or
    damaged string does not), else ``ValueError``. Same results as CompressAI's ``decompress`` for
    every string its ``compress`` wrote (tested).
    """
    model = entropy_model
    if len(strings) != indexes.size(0):
        raise ValueError(f"{len(strings)} strings for {indexes.size(0)} index tensors")
    cdf = model._quantized_cdf.tolist()
    cdf_length = model._cdf_length.reshape(-1).int().tolist()
    offset = model._offset.reshape(-1).int().tolist()
    coder = model.entropy_coder
    outputs = torch.empty(indexes.size(), dtype=torch.int32)
    for i, string in enumerate(strings):
        idx = indexes[i].reshape(-1).int().tolist()
        values = coder.decode_with_indexes(bytes(string) + bytes(rans_pad_bytes(len(idx), len(string))), idx,
                                           cdf, cdf_length, offset)
        # a damaged string can decode to garbage symbols whose re-encoding never ends (the encoder's
        # bypass loop does not terminate for a negative raw value): refuse them before re-encoding
        if values and max(map(abs, values)) > MAX_SYMBOL:
            raise ValueError(f"string #{i} ({len(string)} bytes) decodes to symbols beyond +-{MAX_SYMBOL} "
                             "(damaged)")
        if coder.encode_with_indexes(values, idx, cdf, cdf_length, offset) != bytes(string):
            raise ValueError(f"string #{i} ({len(string)} bytes) is not the coding of its {len(idx)} symbols "
                             "(truncated or damaged)")
        outputs[i] = torch.tensor(values, dtype=torch.int32).reshape(outputs[i].shape)
    return model.dequantize(outputs, means, dtype)


def bounded_bottleneck_decompress(bottleneck: nn.Module, strings: Sequence[bytes], size: Tuple[int, int]) -> Tensor:
    """``EntropyBottleneck.decompress`` through :func:`bounded_decompress` (same indexes and medians)."""
    output_size = (len(strings), bottleneck._quantized_cdf.size(0), *size)
    indexes = bottleneck._build_indexes(output_size).to(bottleneck._quantized_cdf.device)
    medians = bottleneck._extend_ndims(bottleneck._get_medians().detach(), len(size))
    medians = medians.expand(len(strings), *([-1] * (len(size) + 1)))
    return bounded_decompress(bottleneck, strings, indexes, medians.dtype, medians)
