"""The agent daemon: fingerprint the host, register, heartbeat, claim jobs, run them, and ship
their logs, results and usage upstream through a durable spool that survives outages."""
