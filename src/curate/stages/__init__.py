"""One module per DVC stage, each with a ``main(argv) -> int``."""
