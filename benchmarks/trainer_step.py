"""One training step exactly as nerfstudio's Trainer runs it, shared by the benchmark scripts
(it lives in the package, :func:`nerfcodec_ns.bench.bench.train_step`)."""

from nerfcodec_ns.bench.bench import train_step  # noqa: F401
