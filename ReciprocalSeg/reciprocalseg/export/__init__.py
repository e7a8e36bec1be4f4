"""Models leaving the tool: portable formats that run without this package."""
