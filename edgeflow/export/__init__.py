"""Export: freezing, per-family export specs, torch -> ONNX with parity validation, bundles."""
