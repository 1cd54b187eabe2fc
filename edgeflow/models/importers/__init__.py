"""Importers of foreign model files (Piper voices, Piper training checkpoints) into edgeflow models.

Nothing here runs code from the file it reads: ONNX is parsed as protobuf (external data refused),
json with ``json``, checkpoints with ``torch.load(weights_only=True)``.
"""

from edgeflow.models.importers.piper import import_piper, import_piper_checkpoint

__all__ = ["import_piper", "import_piper_checkpoint"]
