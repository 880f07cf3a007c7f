# A package, so pytest puts tests/ (not tests/backends) on sys.path: otherwise the folder
# tests/backends/tensorrt would shadow the real tensorrt module for "import tensorrt".
