-- agentq schema, version 4: retention (see SQLite's 0009). What removed tasks counted in
-- /metrics: tasks by state and class, histogram buckets, count and sum, events by kind and worker.
CREATE TABLE pruned_counts (
    state TEXT   NOT NULL,
    class TEXT   NOT NULL,
    n     BIGINT NOT NULL,
    PRIMARY KEY (state, class)
);
CREATE TABLE pruned_buckets (
    metric TEXT             NOT NULL,
    bound  DOUBLE PRECISION NOT NULL,
    n      BIGINT           NOT NULL,
    PRIMARY KEY (metric, bound)
);
CREATE TABLE pruned_sums (
    metric TEXT             NOT NULL PRIMARY KEY,
    count  BIGINT           NOT NULL,
    total  DOUBLE PRECISION NOT NULL
);
CREATE TABLE pruned_events (
    kind   TEXT   NOT NULL,
    worker TEXT   NOT NULL,
    n      BIGINT NOT NULL,
    PRIMARY KEY (kind, worker)
);
