"""Op layer: torch.library custom ops, their autograd, and backend dispatch."""
