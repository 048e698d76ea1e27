-- agentq schema, version 2: Claude sessions, and what each task cost.

-- The conversation each Claude worker is in. agentq chooses the id and stores it before the
-- process starts, so it survives restarts; `cwd` is part of it (Claude keeps sessions per folder).
CREATE TABLE worker_sessions (
    worker       TEXT    PRIMARY KEY,
    session_id   TEXT    NOT NULL,
    cwd          TEXT    NOT NULL,
    tasks        INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd     REAL    NOT NULL DEFAULT 0,   -- the conversation's cost so far
    started_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

ALTER TABLE tasks ADD COLUMN session_id    TEXT;
ALTER TABLE tasks ADD COLUMN cost_usd      REAL;
ALTER TABLE tasks ADD COLUMN input_tokens  INTEGER;
ALTER TABLE tasks ADD COLUMN output_tokens INTEGER;
ALTER TABLE tasks ADD COLUMN num_turns     INTEGER;

-- A worker that hit a usage limit (or its daily budget) claims nothing until `until`.
CREATE TABLE worker_pauses (
    worker TEXT    PRIMARY KEY,
    until  INTEGER NOT NULL,
    reason TEXT    NOT NULL,
    since  INTEGER NOT NULL
);

-- What each attempt cost, retried ones included: the ledger behind "cost today" and budgets.
CREATE TABLE usage_log (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    ts            INTEGER NOT NULL,
    worker        TEXT    NOT NULL,
    task_id       INTEGER NOT NULL,
    cost_usd      REAL    NOT NULL DEFAULT 0,
    input_tokens  INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX usage_log_worker_ts ON usage_log (worker, ts);
