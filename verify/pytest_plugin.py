"""pytest plugin placeholder module; filled in by the verification engine."""
