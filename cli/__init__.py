"""``tanvrit-compute``: the user's command line, a client of the public API only."""
