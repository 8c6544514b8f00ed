"""The rate-distortion bench (``nerfcodec bench``): :mod:`.bench` (one trained field, every baseline
and NeRFCodec point as a real file, report and plot), :mod:`.baselines` (the classic plane coders it
compares against) and :mod:`.rd` (BD-rate, BD-PSNR, Pareto fronts).

May import every stage below it. This ``__init__`` imports nothing.
"""
