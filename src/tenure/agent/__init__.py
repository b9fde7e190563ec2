"""The host agent's link to the server: the sync loop (sync.py) and what it remembers (state.py)."""
