-- GPU usage beyond GPU-seconds (issue 13, GPUs on real hosts): GPU-memory GB-seconds and GPU
-- utilisation-seconds, reported (not priced) beside GPU-seconds, and the GPU model an attempt's
-- GPU-seconds are priced at. Numbered 0018 to stay clear of migrations other branches add.
ALTER TABLE usage_records ADD COLUMN gpu_memory_micros INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN gpu_util_micros INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_hourly ADD COLUMN gpu_memory_micros INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_hourly ADD COLUMN gpu_util_micros INTEGER NOT NULL DEFAULT 0;
-- NULL: the agent gave no such figure (no NVML, or a driver without per-process data).
ALTER TABLE job_attempts ADD COLUMN gpu_memory_gb_seconds REAL;
ALTER TABLE job_attempts ADD COLUMN gpu_util_seconds REAL;
ALTER TABLE job_attempts ADD COLUMN gpu_model TEXT;
