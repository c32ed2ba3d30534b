"""The local world for tests and the demo: API emulator, node agent, DNS, providers (DESIGN.md §5).

A test bed, never production: the operator and the sender never import it.
"""
