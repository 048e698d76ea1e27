-- agentq's PostgreSQL schema, version 1: what SQLite's versions 1 to 6 built, in one step.
-- Times are milliseconds since the Unix epoch (BIGINT), as in SQLite: the caller's clock, so that
-- both backends agree and tests control time.

CREATE TABLE tasks (
    id             BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- never reused: output files are named by it
    worker         TEXT    NOT NULL,
    prompt         TEXT    NOT NULL,
    priority       BIGINT  NOT NULL DEFAULT 0,
    state          TEXT    NOT NULL CHECK (state IN ('queued','running','succeeded','failed','cancelled','dead')),
    attempts       BIGINT  NOT NULL DEFAULT 0,
    max_attempts   BIGINT  NOT NULL,
    interruptions  BIGINT  NOT NULL DEFAULT 0,  -- attempts cut short by the death of their daemon
    timeout_ms     BIGINT,
    not_before     BIGINT  NOT NULL,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL,
    started_at     BIGINT,
    finished_at    BIGINT,
    owner          TEXT,
    claim_token    TEXT,
    lease_expires  BIGINT,
    exit_code      INTEGER,
    output         TEXT,
    error          TEXT,
    stderr_tail    TEXT,
    duration_ms    BIGINT,
    source         TEXT    NOT NULL,
    dedup_key      TEXT    UNIQUE,
    -- What the agent reported (Claude workers).
    session_id     TEXT,
    cost_usd       DOUBLE PRECISION,
    input_tokens   BIGINT,
    output_tokens  BIGINT,
    num_turns      BIGINT,
    -- Why the last attempt failed, as a code, and the most memory it held (MiB).
    cause          TEXT,
    memory_peak_mb DOUBLE PRECISION,
    -- Runs in the pool rather than on its worker; its class, and why it runs where it runs.
    pool           BOOLEAN NOT NULL DEFAULT false,
    class          TEXT,
    complexity     DOUBLE PRECISION,
    route_reason   TEXT,
    max_memory     BIGINT
);

-- A worker's claim walks this: its queued tasks, highest priority, oldest first.
CREATE INDEX tasks_claim ON tasks (worker, priority DESC, id) WHERE state = 'queued' AND NOT pool;
-- The pool's claim walks this.
CREATE INDEX tasks_pool ON tasks (priority DESC, id) WHERE state = 'queued' AND pool;
-- Lease recovery and "is anything running".
CREATE INDEX tasks_running ON tasks (lease_expires) WHERE state = 'running';
-- Listings by state or worker, newest first.
CREATE INDEX tasks_worker ON tasks (worker, state);
-- One task at a time per worker, whichever daemon claims it: the claim query checks this, and
-- the index makes a second claim that raced the first fail rather than run beside it.
CREATE UNIQUE INDEX tasks_one_running ON tasks (worker) WHERE state = 'running' AND NOT pool;

CREATE TABLE events (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts      BIGINT NOT NULL,
    task_id BIGINT,
    worker  TEXT,
    kind    TEXT   NOT NULL,
    message TEXT   NOT NULL DEFAULT '',
    data    JSONB  -- the event's figures (attempt, state, cause, duration_ms, ...)
);
CREATE INDEX events_task ON events (task_id, id);
CREATE INDEX events_kind ON events (kind, worker);

-- The conversation each Claude worker is in (see SQLite's 0002).
CREATE TABLE worker_sessions (
    worker       TEXT   PRIMARY KEY,
    session_id   TEXT   NOT NULL,
    cwd          TEXT   NOT NULL,
    tasks        BIGINT NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd     DOUBLE PRECISION NOT NULL DEFAULT 0,
    started_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

-- A paused worker claims nothing until `until`; an errored one waits for `agentq worker restart`.
CREATE TABLE worker_pauses (
    worker TEXT   PRIMARY KEY,
    until  BIGINT NOT NULL,
    reason TEXT   NOT NULL,
    since  BIGINT NOT NULL,
    kind   TEXT   NOT NULL DEFAULT 'paused' CHECK (kind IN ('paused', 'errored'))
);

-- What each attempt cost: the ledger behind "cost today" and budgets.
CREATE TABLE usage_log (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts            BIGINT NOT NULL,
    worker        TEXT   NOT NULL,
    task_id       BIGINT NOT NULL,
    cost_usd      DOUBLE PRECISION NOT NULL DEFAULT 0,
    input_tokens  BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX usage_log_worker_ts ON usage_log (worker, ts);

-- Every attempt of every task, as it ended (succeeded, failed, interrupted, released).
CREATE TABLE attempts (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id        BIGINT NOT NULL,
    attempt        BIGINT NOT NULL,
    worker         TEXT   NOT NULL,
    owner          TEXT,
    started_at     BIGINT,
    ended_at       BIGINT NOT NULL,
    outcome        TEXT   NOT NULL,
    cause          TEXT,
    reason         TEXT,
    exit_code      INTEGER,
    duration_ms    BIGINT,
    memory_peak_mb DOUBLE PRECISION
);
CREATE INDEX attempts_task ON attempts (task_id, id);

-- How many tasks there are of each worker, placement, state and class ('' for none), kept by the
-- trigger below as tasks change, so that status, top and /metrics read a few rows.
CREATE TABLE task_counts (
    worker TEXT    NOT NULL,
    pool   BOOLEAN NOT NULL,
    state  TEXT    NOT NULL,
    class  TEXT    NOT NULL,
    n      BIGINT  NOT NULL,
    PRIMARY KEY (worker, pool, state, class)
);

CREATE FUNCTION task_counts_add(w TEXT, p BOOLEAN, s TEXT, c TEXT, d BIGINT) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO task_counts AS t (worker, pool, state, class, n) VALUES (w, p, s, c, d)
    ON CONFLICT (worker, pool, state, class) DO UPDATE SET n = t.n + excluded.n;
$$;

CREATE FUNCTION task_counts_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM task_counts_add(NEW.worker, NEW.pool, NEW.state, coalesce(NEW.class, ''), 1);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM task_counts_add(OLD.worker, OLD.pool, OLD.state, coalesce(OLD.class, ''), -1);
    ELSIF (OLD.worker, OLD.pool, OLD.state, coalesce(OLD.class, ''))
          IS DISTINCT FROM (NEW.worker, NEW.pool, NEW.state, coalesce(NEW.class, '')) THEN
        -- The two rows are locked in one order (the lesser key first) whichever way the task
        -- moves, so two transactions moving tasks opposite ways never wait on each other.
        IF (OLD.worker, OLD.pool, OLD.state, coalesce(OLD.class, ''))
           < (NEW.worker, NEW.pool, NEW.state, coalesce(NEW.class, '')) THEN
            PERFORM task_counts_add(OLD.worker, OLD.pool, OLD.state, coalesce(OLD.class, ''), -1);
            PERFORM task_counts_add(NEW.worker, NEW.pool, NEW.state, coalesce(NEW.class, ''), 1);
        ELSE
            PERFORM task_counts_add(NEW.worker, NEW.pool, NEW.state, coalesce(NEW.class, ''), 1);
            PERFORM task_counts_add(OLD.worker, OLD.pool, OLD.state, coalesce(OLD.class, ''), -1);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER task_counts_follow AFTER INSERT OR DELETE OR UPDATE OF worker, pool, state, class
    ON tasks FOR EACH ROW EXECUTE FUNCTION task_counts_follow();

-- The most memory each worker's attempts held (the pool's under 'pool'), per daemon run (the
-- attempts' owner), written with each attempt.
CREATE TABLE attempt_peaks (
    owner          TEXT NOT NULL,
    key            TEXT NOT NULL,
    memory_peak_mb DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (owner, key)
);

CREATE FUNCTION attempt_peaks_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.owner IS NOT NULL AND NEW.memory_peak_mb IS NOT NULL THEN
        INSERT INTO attempt_peaks AS a (owner, key, memory_peak_mb)
            SELECT NEW.owner, CASE WHEN t.pool THEN 'pool' ELSE NEW.worker END, NEW.memory_peak_mb
              FROM tasks t WHERE t.id = NEW.task_id
        ON CONFLICT (owner, key) DO UPDATE
            SET memory_peak_mb = greatest(a.memory_peak_mb, excluded.memory_peak_mb);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER attempt_peaks_follow AFTER INSERT ON attempts
    FOR EACH ROW EXECUTE FUNCTION attempt_peaks_follow();
