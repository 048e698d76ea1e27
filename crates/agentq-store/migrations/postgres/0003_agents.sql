-- agentq schema, version 3: several agent CLIs (see SQLite's 0008). A worker's conversation names
-- the driver whose it is, and keeps its output tokens beside its input tokens.
ALTER TABLE worker_sessions ADD COLUMN agent TEXT NOT NULL DEFAULT 'claude';
ALTER TABLE worker_sessions ADD COLUMN output_tokens BIGINT NOT NULL DEFAULT 0;
