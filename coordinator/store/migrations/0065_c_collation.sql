-- Nothing to do on SQLite: it compares text byte by byte (BINARY) already. The PostgreSQL twin
-- gives every text column the "C" collation, so that ids and cursors sort alike on both.
SELECT 1;
