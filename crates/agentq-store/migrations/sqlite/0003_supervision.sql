-- agentq schema, version 3: supervision. Why attempts end, what they held, and errored workers.

-- Why the last attempt failed, as a code (timeout, idle_timeout, memory_limit, crashed,
-- agent_error, spawn_failed, config, bad_input); `error` says it in words.
ALTER TABLE tasks ADD COLUMN cause          TEXT;
-- The most resident memory the last attempt's process tree held, in MiB.
ALTER TABLE tasks ADD COLUMN memory_peak_mb REAL;

-- Every attempt of every task, as it ended: a dead task keeps each attempt's reason here.
-- `outcome` is succeeded, failed, interrupted (its daemon died) or released (given back unspent).
CREATE TABLE attempts (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id        INTEGER NOT NULL,
    attempt        INTEGER NOT NULL,
    worker         TEXT    NOT NULL,
    owner          TEXT,
    started_at     INTEGER,
    ended_at       INTEGER NOT NULL,
    outcome        TEXT    NOT NULL,
    cause          TEXT,
    reason         TEXT,
    exit_code      INTEGER,
    duration_ms    INTEGER,
    memory_peak_mb REAL
);
CREATE INDEX attempts_task ON attempts (task_id, id);

-- A pause ends by itself at `until`; an errored worker (its restart policy gave up) waits for
-- `agentq worker restart`.
ALTER TABLE worker_pauses ADD COLUMN kind TEXT NOT NULL DEFAULT 'paused'
    CHECK (kind IN ('paused', 'errored'));

-- The figures of an event (attempt, state, cause, duration_ms, ...), as a JSON object.
ALTER TABLE events ADD COLUMN data TEXT;
