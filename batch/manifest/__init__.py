"""The manifest phase: read, expand, build task specs, validate, plan."""
