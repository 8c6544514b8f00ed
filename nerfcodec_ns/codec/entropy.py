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


def symbols_in_range(symbols: Tensor) -> bool:
    """True when every decoded symbol lies in [-MAX_SYMBOL, MAX_SYMBOL]. (Compares min and max: the
    absolute value of the int32 -2^31 is itself -2^31, so ``abs().max()`` would let it through.)"""
    return symbols.numel() == 0 or (int(symbols.min()) >= -MAX_SYMBOL and int(symbols.max()) <= MAX_SYMBOL)


def rans_pad_bytes(num_symbols: int, string_bytes: int) -> int:
    """Zero bytes appended to a string before CompressAI's rANS decoder reads it.

    CompressAI's decoder (``RansDecoder::decode_with_indexes``, 64-bit state, 32-bit words, 4-bit
    bypass chunks) has no end-of-buffer check: a short or damaged string makes it read past its input.
    Its reads are bounded, though: 2 words to start, at most 1 per symbol, and at most 1 per bypass
    chunk, and the bypass chunks of a damaged string are bounded by the symbols and the string's own
    bits (docs/bitstream.md, "Bounded entropy decoding", has the derivation). This is that bound in
    bytes, so the decoder never leaves the padded buffer, whatever the string holds.
    """
    return 200 * int(num_symbols) + 24 * int(string_bytes) + 2048


_KEPT_DEPTH = 0
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


@contextlib.contextmanager
def large_allocations_kept():
    """Within the block, glibc serves large allocations from the heap and keeps freed memory, so the
    padded strings (megabytes each, allocated and freed per string) do not page-fault anew every time
    (docs/decoder_safety.md measures the whole decode). Restores glibc's default thresholds and trims the
    heap on exit; does nothing where glibc's ``mallopt`` is not available. Re-entrant: only the
    outermost block changes the settings (the decoder wraps all levels in one)."""
    global _KEPT_DEPTH
    libc = None
    _KEPT_DEPTH += 1
    if _KEPT_DEPTH > 1:
        try:
            yield
        finally:
            _KEPT_DEPTH -= 1
        return
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        set_ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    except (OSError, AttributeError):
        set_ok = False
    try:
        yield
    finally:
        _KEPT_DEPTH -= 1
        if set_ok:
            libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
            libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
            libc.malloc_trim(0)


_ZEROS = memoryview(b"")
#: Largest zero buffer kept between calls (bytes); larger pads are made for the call and dropped.
_ZEROS_KEEP = 64 << 20


def padded(string: bytes, pad: int) -> bytes:
    """``string`` followed by ``pad`` zero bytes (from a cached zero buffer: no page-faulting fill)."""
    global _ZEROS
    if pad > len(_ZEROS):
        zeros = memoryview(bytes(pad))
        if pad <= _ZEROS_KEEP:
            _ZEROS = zeros
    else:
        zeros = _ZEROS
    return b"".join((string, zeros[:pad]))


def _table_lists(model: nn.Module):
    """The entropy model's tables as the Python lists the native coder takes, cached on the model
    until its tables change (converting them is most of the per-string cost on CPU)."""
    tables = (model._quantized_cdf, model._cdf_length, model._offset)
    key = tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in tables)
    cached = getattr(model, "_nfc_table_lists", None)
    if cached is None or cached[0] != key:
        lists = (tables[0].tolist(), tables[1].reshape(-1).int().tolist(), tables[2].reshape(-1).int().tolist())
        object.__setattr__(model, "_nfc_table_lists", (key, lists))
        cached = (key, lists)
    return cached[1]


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
    cdf, cdf_length, offset = _table_lists(model)
    coder = model.entropy_coder
    outputs = torch.empty(indexes.size(), dtype=torch.int32)
    with large_allocations_kept():
        _decode_strings(coder, strings, indexes, cdf, cdf_length, offset, outputs)
    return model.dequantize(outputs, means, dtype)


def _decode_strings(coder, strings, indexes, cdf, cdf_length, offset, outputs) -> None:
    for i, string in enumerate(strings):
        # pass the native coder only the tables this string uses (converting the lists is most of a
        # call's cost): same tables per symbol, so the same symbols and the same bytes
        used, inverse = torch.unique(indexes[i].reshape(-1).int(), return_inverse=True)
        tables = used.tolist()
        sub = ([cdf[t] for t in tables], [cdf_length[t] for t in tables], [offset[t] for t in tables])
        idx = inverse.int().tolist()
        values = coder.decode_with_indexes(padded(string, rans_pad_bytes(len(idx), len(string))), idx, *sub)
        decoded = torch.tensor(values, dtype=torch.int32)
        # a damaged string can decode to garbage symbols whose re-encoding never ends (the encoder's
        # bypass loop does not terminate for a negative raw value): refuse them before re-encoding
        if not symbols_in_range(decoded):
            raise ValueError(f"string #{i} ({len(string)} bytes) decodes to symbols beyond +-{MAX_SYMBOL} "
                             "(damaged)")
        if coder.encode_with_indexes(values, idx, *sub) != bytes(string):
            raise ValueError(f"string #{i} ({len(string)} bytes) is not the coding of its {len(idx)} symbols "
                             "(truncated or damaged)")
        outputs[i] = decoded.reshape(outputs[i].shape)


def bounded_bottleneck_decompress(bottleneck: nn.Module, strings: Sequence[bytes], size: Tuple[int, int]) -> Tensor:
    """``EntropyBottleneck.decompress`` through :func:`bounded_decompress` (same indexes and medians)."""
    output_size = (len(strings), bottleneck._quantized_cdf.size(0), *size)
    indexes = bottleneck._build_indexes(output_size).to(bottleneck._quantized_cdf.device)
    medians = bottleneck._extend_ndims(bottleneck._get_medians().detach(), len(size))
    medians = medians.expand(len(strings), *([-1] * (len(size) + 1)))
    return bounded_decompress(bottleneck, strings, indexes, medians.dtype, medians)
