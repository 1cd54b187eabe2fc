"""Model compression for the flow vocoders: distillation, structured pruning, flow/height/depth reduction.

Library code only (torch, no ONNX); the passes in :mod:`edgeflow.passes` wrap it.

* the spectral losses (waveform L1, log-mel L1, multi-resolution STFT) live in :mod:`edgeflow.audio.losses`
  (torch), below the training layer, which uses them too.
* :mod:`~edgeflow.compress.data`: distillation data (corpus segments or calibration mels), by (seed, step).
* :mod:`~edgeflow.compress.settings` + :mod:`~edgeflow.compress.distill`: teacher -> student training with
  checkpoints and exact resume.
* :mod:`~edgeflow.compress.prune`: channel pruning of the WaveNet-like conditioning nets.
* :mod:`~edgeflow.compress.reduce`: fewer flows, smaller WaveFlow height, fewer layers.
* :mod:`~edgeflow.compress.student`: student configs (overrides, size checks, target fitting).
* :mod:`~edgeflow.compress.layers`: shared helpers (the model's family and its prunable nets, frozen-state
  carry-over; the weight surgery is :mod:`edgeflow.models.surgery`).

What a model may lose comes from its family's declarations (:class:`edgeflow.models.family.Family`).
"""
