"""Reporting: the paper's tables, the agreement between metrics, the findings summary, similarity
curves, and the qualitative figures (unit choice, class-average patches, heatmaps)."""
