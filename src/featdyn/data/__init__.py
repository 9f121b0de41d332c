"""Data on disk: image datasets (download, split manifest, uint8 cache, generated demo data) and the
Zarr activation stores that extraction writes and the statistics read."""
