"""Pure-PyTorch semantics of every op: the fallback and the test oracle."""
