"""The Lance store: one schema per table, fragment writes, atomic commits and the query API."""
