-- The signal that ended a job ("TERM"/"KILL" when its agent stopped it, else its own fatal one).
ALTER TABLE jobs ADD COLUMN signal TEXT;
