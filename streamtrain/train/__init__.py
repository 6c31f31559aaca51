"""Training: model plugins, the learning step, guards, prequential metrics, the trainer loop."""
