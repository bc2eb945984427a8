"""Image layer: SimpleITK geometry and file I/O. Knows nothing of Slicer."""
