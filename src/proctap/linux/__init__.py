"""Thin wrappers of Linux kernel interfaces: pure decoders over bytes, apart from the I/O."""
