"""One module per table; one function per use case, taking a connection."""
