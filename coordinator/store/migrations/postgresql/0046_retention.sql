-- Retention (issue 14/15); see the SQLite 0046 for the why.
-- Completed webhook deliveries by completion time, and their attempts and events by delivery.
CREATE INDEX webhook_deliveries_done ON webhook_deliveries (completed_at) WHERE state <> 'pending';
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (event_id);
CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts (delivery_id);
-- Usage ledger rows already rolled up into usage_hourly, by time.
CREATE INDEX usage_records_rolled ON usage_records (recorded_at) WHERE rolled_up = 1;
