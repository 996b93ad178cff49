"""What tests/ and bench/ both use to drive a real gpubus: the process
harness and the speech fixtures. Neither imports the other; both import
this. Like tests/ and bench/, it runs from a checkout and is not installed."""
