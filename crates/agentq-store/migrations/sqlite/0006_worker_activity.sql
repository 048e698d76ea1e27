-- agentq schema, version 6: what `agentq status` (and `top`, every second) and `/metrics` read,
-- kept as tasks change, so that they read a few rows however long the history grows.

-- How many tasks there are of each worker, placement, state and class ('' for none). Kept by the
-- triggers below, which see every change of those columns, whichever statement makes it.
CREATE TABLE task_counts (
    worker TEXT    NOT NULL,
    pool   INTEGER NOT NULL,
    state  TEXT    NOT NULL,
    class  TEXT    NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (worker, pool, state, class)
) WITHOUT ROWID;
INSERT INTO task_counts (worker, pool, state, class, n)
    SELECT worker, pool, state, coalesce(class, ''), count(*) FROM tasks GROUP BY 1, 2, 3, 4;

CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks BEGIN
    INSERT OR IGNORE INTO task_counts VALUES (new.worker, new.pool, new.state, coalesce(new.class, ''), 0);
    UPDATE task_counts SET n = n + 1
     WHERE worker = new.worker AND pool = new.pool AND state = new.state
       AND class = coalesce(new.class, '');
END;
CREATE TRIGGER task_counts_update AFTER UPDATE OF worker, pool, state, class ON tasks
    WHEN old.worker IS NOT new.worker OR old.pool IS NOT new.pool OR old.state IS NOT new.state
      OR old.class IS NOT new.class
BEGIN
    UPDATE task_counts SET n = n - 1
     WHERE worker = old.worker AND pool = old.pool AND state = old.state
       AND class = coalesce(old.class, '');
    INSERT OR IGNORE INTO task_counts VALUES (new.worker, new.pool, new.state, coalesce(new.class, ''), 0);
    UPDATE task_counts SET n = n + 1
     WHERE worker = new.worker AND pool = new.pool AND state = new.state
       AND class = coalesce(new.class, '');
END;
CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks BEGIN
    UPDATE task_counts SET n = n - 1
     WHERE worker = old.worker AND pool = old.pool AND state = old.state
       AND class = coalesce(old.class, '');
END;

-- The most memory each worker's attempts held (the pool's under 'pool'), per daemon run (the
-- attempts' owner), written with each attempt: a daemon's peaks are one lookup, not a scan of
-- every attempt it made.
CREATE TABLE attempt_peaks (
    owner          TEXT NOT NULL,
    key            TEXT NOT NULL,
    memory_peak_mb REAL NOT NULL,
    PRIMARY KEY (owner, key)
) WITHOUT ROWID;
INSERT INTO attempt_peaks (owner, key, memory_peak_mb)
    SELECT a.owner, CASE WHEN t.pool = 1 THEN 'pool' ELSE a.worker END, max(a.memory_peak_mb)
      FROM attempts a JOIN tasks t ON t.id = a.task_id
     WHERE a.owner IS NOT NULL AND a.memory_peak_mb IS NOT NULL
     GROUP BY 1, 2;
CREATE TRIGGER attempt_peaks_insert AFTER INSERT ON attempts
    WHEN new.owner IS NOT NULL AND new.memory_peak_mb IS NOT NULL
BEGIN
    INSERT OR IGNORE INTO attempt_peaks
        SELECT new.owner, CASE WHEN t.pool = 1 THEN 'pool' ELSE new.worker END, new.memory_peak_mb
          FROM tasks t WHERE t.id = new.task_id;
    UPDATE attempt_peaks SET memory_peak_mb = max(memory_peak_mb, new.memory_peak_mb)
     WHERE owner = new.owner
       AND key = (SELECT CASE WHEN t.pool = 1 THEN 'pool' ELSE new.worker END
                    FROM tasks t WHERE t.id = new.task_id);
END;
