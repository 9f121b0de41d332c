"""The run's specification, resolved at every parse of the workflow (also the re-parse each cluster
job does before its own work): the config and its schema, the training block per epoch, metric
kinds, layer presets, unit defaults, file locations and code fingerprints.

Torch-free and pandas-free by design, so that a parse costs milliseconds. Modules here import only
each other, ``featdyn`` itself, numpy and the standard library at module level; the config check,
which builds models on the meta device, imports ``featdyn.nets`` inside its functions.
"""
