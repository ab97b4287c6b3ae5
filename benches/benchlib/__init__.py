"""Side-by-side benchmarks of layerfs, kernel overlayfs and fuse-overlayfs."""
