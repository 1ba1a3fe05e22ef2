"""Code shared by the coordinator, the agent and the CLI: wire models, ids, states, errors.

Nothing here imports ``coordinator``, ``agentd`` or ``cli``; dependencies point one way.
"""

VERSION = "0.1.0"
API_VERSION = "v0"
