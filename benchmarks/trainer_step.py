"""One training step exactly as nerfstudio's Trainer runs it, shared by the benchmark scripts
(it lives in the package, :func:`nerfcodec_ns.bench.train_step`)."""

from nerfcodec_ns.bench import train_step  # noqa: F401
