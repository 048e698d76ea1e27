-- agentq schema, version 9: retention. Finished tasks are removed (`[retention]`, `agentq clean`)
-- with their attempts and events; what they counted in /metrics is kept here, so that its
-- counters never go down: tasks by state and class, each histogram's count at or under each
-- bound and its count and sum, and events by kind and worker ('' for none).
CREATE TABLE pruned_counts (
    state TEXT    NOT NULL,
    class TEXT    NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (state, class)
) WITHOUT ROWID;
CREATE TABLE pruned_buckets (
    metric TEXT    NOT NULL,
    bound  REAL    NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (metric, bound)
) WITHOUT ROWID;
CREATE TABLE pruned_sums (
    metric TEXT    NOT NULL PRIMARY KEY,
    count  INTEGER NOT NULL,
    total  REAL    NOT NULL
) WITHOUT ROWID;
CREATE TABLE pruned_events (
    kind   TEXT    NOT NULL,
    worker TEXT    NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (kind, worker)
) WITHOUT ROWID;
