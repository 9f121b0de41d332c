"""The compute engine: float64 sufficient statistics streamed from activation stores, the metrics
computed from them (layer granularity) or map by map (filter granularity), the bootstrap over image
groups, and the score files. Reads stores; never builds a model."""
