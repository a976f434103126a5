"""Model files: checkpoints written atomically and checksummed (:mod:`~pixelwise.io.checkpoint`),
the record of a trained model checked whenever a file is opened (:mod:`~pixelwise.inference.record`),
and loading that never runs code (:mod:`~pixelwise.io.safe_load`).

Import the modules themselves: :mod:`~pixelwise.io.safe_load` sits below the encoders, which
read weight files through it, while the checkpoint rebuilds models.
"""
