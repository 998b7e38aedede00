"""Fault-injection suite: real SIGKILLs, real server restarts, real broken connections."""
