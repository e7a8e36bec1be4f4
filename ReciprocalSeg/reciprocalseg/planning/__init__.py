"""Planning from the data: a dataset fingerprint (fingerprint.py) and the `auto` plan (planner.py)."""
