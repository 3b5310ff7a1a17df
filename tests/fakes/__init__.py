"""Fakes that tests (and other modules' tests) can reach: a scripted model server, ..."""
