"""The sender service that runs in every sender pod (DESIGN.md §3)."""
