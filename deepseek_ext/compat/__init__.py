"""deepseek_ext.compat: the public APIs of the projects deepseek_ext stands in for (DeepGEMM,
DeepEP, DualPipe), with their names, signatures and return values, over deepseek_ext's own
implementation, so code written against them changes only its import lines. Each module's
docstring names the upstream version it follows and where it differs."""
