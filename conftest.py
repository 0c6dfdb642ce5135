"""Load the xcpimg pytest plugin for this checkout (also registered as a pytest11 entry point)."""
