-- agentq schema, version 8: several agent CLIs. A worker's conversation names the driver whose it
-- is (another agent cannot continue it: a worker switched from claude to codex starts anew), and
-- keeps its output tokens beside its input tokens (Codex reports both for the whole thread, so a
-- task's share is the difference from what was recorded before it).
ALTER TABLE worker_sessions ADD COLUMN agent TEXT NOT NULL DEFAULT 'claude';
ALTER TABLE worker_sessions ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
