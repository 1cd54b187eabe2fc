"""Training of flow vocoders: recipes (package data), segment sampling, the one training loop with a
pluggable objective (:mod:`edgeflow.train.loop`, exact resume, DDP) and the maximum-likelihood trainer."""
