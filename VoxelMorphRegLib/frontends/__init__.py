"""Front ends: the command line and (in ../mrml) the MRML bridge; thin callers of the pipelines."""
