"""Code shared by the coordinator, the agent and the CLI: wire models, ids, states, errors.

Nothing here imports ``coordinator``, ``agentd`` or ``cli``; dependencies point one way.
"""

VERSION = "0.1.0"
API_VERSION = "v0"

# Every program (tanvrit-coordinator, tanvrit-agentd, tanvrit-compute) takes -h as well as --help
# and wraps help at the same width; each passes this as its top-level click context_settings.
HELP_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
