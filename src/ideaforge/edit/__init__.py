"""Edits of an environment's files: parsing a model's reply (`parse`) and applying it safely (`apply`).

A bottom layer: it imports only `envs` and `errors`, so both the ideators (which
check offline ideas' blocks) and the implementers use the same rules.
"""
