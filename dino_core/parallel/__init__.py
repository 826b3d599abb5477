"""How a run spreads over processes: launcher detection, process group, parallel strategies.

Imported by module (``dino_core.parallel.env``, ``dino_core.parallel.ddp`` ...).
"""
