"""One training step exactly as nerfstudio's Trainer runs it, shared by the benchmark scripts."""

from __future__ import annotations


def train_step(trainer, step: int):
    """Before-iteration callbacks, ``train_iteration``, after-iteration callbacks (no eval, no logging).

    Returns ``train_iteration``'s ``(loss, loss_dict, metrics_dict)``.
    """
    from nerfstudio.engine.callbacks import TrainingCallbackLocation as Loc

    trainer.pipeline.train()
    for cb in trainer.callbacks:
        cb.run_callback_at_location(step, location=Loc.BEFORE_TRAIN_ITERATION)
    out = trainer.train_iteration(step)
    for cb in trainer.callbacks:
        cb.run_callback_at_location(step, location=Loc.AFTER_TRAIN_ITERATION)
    return out
