"""Jobs that compose the library into one run: what the CLI's sub-commands call."""
