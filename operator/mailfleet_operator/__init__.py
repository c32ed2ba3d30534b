"""The mailfleet operator: kopf handlers over level-based reconcilers (DESIGN.md §4)."""
