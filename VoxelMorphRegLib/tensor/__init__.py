"""Pure tensor code: knows nothing of files, SimpleITK or Slicer."""
