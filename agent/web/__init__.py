"""Static assets of the local status page (kept as Python so wheels and PyInstaller
bundles carry them without package-data configuration)."""
