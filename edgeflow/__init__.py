"""edgeflow: take flow-based speech models from training to a small, fast, validated edge engine.

Data flows one way: model -> passes -> export -> runtime -> validate -> report.
``edgeflow.runtime`` never imports torch.
"""

__version__ = "0.1.0"
