"""Files: every model file's reader and writer behind one door
(:func:`~pixelwise.io.model_file.read_model_file`), the record of a trained model and its one
metadata schema (:mod:`~pixelwise.io.record`), checkpoints written atomically and checksummed
(:mod:`~pixelwise.io.checkpoint`), safetensors files and model folders
(:mod:`~pixelwise.io.safetensors_file`), loading that never runs code
(:mod:`~pixelwise.io.safe_load`) and atomic writes (:mod:`~pixelwise.io.atomic`).

Nothing here builds a model: whether a record describes one that can predict is checked above,
by :mod:`pixelwise.inference.record`. Import the modules themselves.
"""
