"""Training: the loop, the step's mechanics, optimiser, EMA, schedules, checkpoint files.

Imported by module (``dino_core.train.loop``, ``dino_core.train.step`` ...): this package
file imports nothing, so reading a schedule or a checkpoint does not build the loop.
"""
