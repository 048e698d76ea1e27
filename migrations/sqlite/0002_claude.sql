-- agentq schema, version 2: Claude sessions, and what each task cost.

-- The conversation each Claude worker is in. agentq chooses the id and stores it before the
-- process starts, so it survives restarts; `cwd` is part of it (Claude keeps sessions per folder).
CREATE TABLE worker_sessions (
    worker       TEXT    PRIMARY KEY,
    session_id   TEXT    NOT NULL,
    cwd          TEXT    NOT NULL,
    tasks        INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    started_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

ALTER TABLE tasks ADD COLUMN session_id    TEXT;
ALTER TABLE tasks ADD COLUMN cost_usd      REAL;
ALTER TABLE tasks ADD COLUMN input_tokens  INTEGER;
ALTER TABLE tasks ADD COLUMN output_tokens INTEGER;
ALTER TABLE tasks ADD COLUMN num_turns     INTEGER;
