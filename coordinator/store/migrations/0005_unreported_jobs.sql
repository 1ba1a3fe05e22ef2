-- When a live agent's heartbeats stopped listing one of its RUNNING jobs (NULL while listed).
ALTER TABLE jobs ADD COLUMN unreported_since INTEGER;
