-- agentq schema, version 1. Times are milliseconds since the Unix epoch.
CREATE TABLE tasks (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: output files are named by it
    worker        TEXT    NOT NULL,
    prompt        TEXT    NOT NULL,
    priority      INTEGER NOT NULL DEFAULT 0,
    state         TEXT    NOT NULL CHECK (state IN ('queued','running','succeeded','failed','cancelled','dead')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL,
    interruptions INTEGER NOT NULL DEFAULT 0,  -- attempts cut short by the death of their daemon
    timeout_ms    INTEGER,
    not_before    INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    owner         TEXT,
    claim_token   TEXT,
    lease_expires INTEGER,
    exit_code     INTEGER,
    output        TEXT,
    error         TEXT,
    stderr_tail   TEXT,
    duration_ms   INTEGER,
    source        TEXT    NOT NULL,
    dedup_key     TEXT    UNIQUE
);

-- The claim query walks this index in order: a worker's queued tasks, highest priority, oldest first.
CREATE INDEX tasks_claim ON tasks (worker, state, priority DESC, id);
-- Lease recovery and "is anything running".
CREATE INDEX tasks_lease ON tasks (state, lease_expires);

CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      INTEGER NOT NULL,
    task_id INTEGER,
    worker  TEXT,
    kind    TEXT    NOT NULL,
    message TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX events_task ON events (task_id, id);
