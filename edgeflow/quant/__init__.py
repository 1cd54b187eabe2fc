"""Quantization: calibration sets (:mod:`.calibration`), coupling-aware INT8 (:mod:`.int8`), FP16 (:mod:`.fp16`).

:mod:`.graph` finds the roles of the exported graph's nodes (coupling ``end`` convs, invertible
1x1 convs, the WaveNet layers) so the affine update and log-det path stay in float.
"""
