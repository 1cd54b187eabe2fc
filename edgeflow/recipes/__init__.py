"""Training recipes (package data ``<name>.json``: a model family, its config and the training settings),
read through :mod:`importlib.resources` by :func:`edgeflow.train.recipe.load_recipe`."""
