"""One module per CLI verb group."""
