"""Maximum-likelihood training of flow vocoders: recipes, segment sampling, trainer with exact resume."""
