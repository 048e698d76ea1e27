-- agentq schema, version 10: /metrics' counters, counted as things happen. What tasks that ended
-- count (by worker, state and cause), retries (by worker and cause), the tokens and cost attempts
-- reported, and the histograms of ended tasks' durations, queue waits and memory peaks (by
-- worker) are added to these rows in the transaction that ends the task or schedules the retry
-- (store::counters says what each adds), so a scrape reads a few rows however long the history,
-- and removing history takes nothing from them.
--
-- A row is one series: its name, and its labels as `key=value` pairs joined by ',' in a fixed
-- order. A histogram is a `_bucket` row per bound (`le`, '+Inf' for the rest) counting the
-- observations above the bound before it and at most its own, and a `_sum` row.
CREATE TABLE counters (
    name   TEXT NOT NULL,
    labels TEXT NOT NULL,
    value  REAL NOT NULL,
    PRIMARY KEY (name, labels)
) WITHOUT ROWID;

-- Seeded from the history there is, so that an upgraded database keeps its totals: the tasks
-- still here, and what retention folded into pruned_* of those it removed (whose worker and
-- cause, where the fold did not keep them, count as ''). The two never overlap: a removed task's
-- rows are gone. The bounds are store::counters' (ms, and MiB).
CREATE TEMP TABLE bounds (histogram TEXT NOT NULL, bound REAL NOT NULL, le TEXT NOT NULL);
INSERT INTO bounds VALUES
    ('duration_ms', 100, '100'), ('duration_ms', 500, '500'), ('duration_ms', 1000, '1000'),
    ('duration_ms', 5000, '5000'), ('duration_ms', 10000, '10000'),
    ('duration_ms', 30000, '30000'), ('duration_ms', 60000, '60000'),
    ('duration_ms', 300000, '300000'), ('duration_ms', 600000, '600000'),
    ('duration_ms', 1800000, '1800000'), ('duration_ms', 3600000, '3600000'),
    ('queue_wait_ms', 100, '100'), ('queue_wait_ms', 1000, '1000'),
    ('queue_wait_ms', 5000, '5000'), ('queue_wait_ms', 10000, '10000'),
    ('queue_wait_ms', 30000, '30000'), ('queue_wait_ms', 60000, '60000'),
    ('queue_wait_ms', 300000, '300000'), ('queue_wait_ms', 600000, '600000'),
    ('queue_wait_ms', 1800000, '1800000'), ('queue_wait_ms', 3600000, '3600000'),
    ('queue_wait_ms', 14400000, '14400000'), ('queue_wait_ms', 43200000, '43200000'),
    ('queue_wait_ms', 86400000, '86400000'),
    ('memory_peak_mb', 16, '16'), ('memory_peak_mb', 64, '64'), ('memory_peak_mb', 256, '256'),
    ('memory_peak_mb', 512, '512'), ('memory_peak_mb', 1024, '1024'),
    ('memory_peak_mb', 2048, '2048'), ('memory_peak_mb', 4096, '4096'),
    ('memory_peak_mb', 8192, '8192');

-- Tasks that ended: one ending each, as they stand.
INSERT INTO counters (name, labels, value)
SELECT 'finished', labels, sum(n) FROM (
    SELECT 'worker=' || worker || ',state=' || state || ',cause=' ||
           CASE WHEN state = 'succeeded' THEN 'none'
                WHEN state = 'cancelled' THEN 'cancelled'
                WHEN state = 'dead' AND interruptions > max_attempts THEN 'interrupted'
                ELSE coalesce(cause, 'none') END AS labels, 1 AS n
      FROM tasks WHERE state IN ('succeeded', 'failed', 'cancelled', 'dead')
    UNION ALL
    SELECT 'worker=,state=' || state || ',cause=' ||
           CASE state WHEN 'succeeded' THEN 'none' WHEN 'cancelled' THEN 'cancelled' ELSE '' END,
           n
      FROM pruned_counts WHERE state IN ('succeeded', 'failed', 'cancelled', 'dead')
) GROUP BY labels;

-- Retries: each `task_retrying` event, with the cause it carries.
INSERT INTO counters (name, labels, value)
SELECT 'retries', labels, sum(n) FROM (
    SELECT 'worker=' || coalesce(worker, '') || ',cause=' ||
           coalesce(json_extract(data, '$.cause'), '') AS labels, 1 AS n
      FROM events WHERE kind = 'task_retrying'
    UNION ALL
    SELECT 'worker=' || worker || ',cause=', n FROM pruned_events WHERE kind = 'task_retrying'
) GROUP BY labels;

-- Tokens and cost: the usage ledger (what retention removed of it was not kept).
INSERT INTO counters (name, labels, value)
SELECT 'tokens', 'worker=' || worker || ',kind=input', sum(input_tokens) FROM usage_log GROUP BY worker
UNION ALL
SELECT 'tokens', 'worker=' || worker || ',kind=output', sum(output_tokens) FROM usage_log GROUP BY worker
UNION ALL
SELECT 'cost_usd', 'worker=' || worker, sum(cost_usd) FROM usage_log GROUP BY worker;

-- The histograms observe tasks that ended succeeded, failed or dead: their last attempt's
-- duration and memory peak, and the wait from being queued to their first attempt's start.
CREATE TEMP TABLE observed AS
SELECT 'duration_ms' AS histogram, worker, CAST(duration_ms AS REAL) AS value FROM tasks
 WHERE state IN ('succeeded', 'failed', 'dead') AND duration_ms IS NOT NULL
UNION ALL
SELECT 'memory_peak_mb', worker, memory_peak_mb FROM tasks
 WHERE state IN ('succeeded', 'failed', 'dead') AND memory_peak_mb IS NOT NULL
UNION ALL
SELECT 'queue_wait_ms', worker, max(coalesce(
         (SELECT min(a.started_at) FROM attempts a WHERE a.task_id = t.id), t.started_at)
       - t.created_at, 0) FROM tasks t
 WHERE state IN ('succeeded', 'failed', 'dead')
   AND coalesce((SELECT min(a.started_at) FROM attempts a WHERE a.task_id = t.id), t.started_at)
       IS NOT NULL;

INSERT INTO counters (name, labels, value)
SELECT histogram || '_bucket', 'worker=' || worker || ',le=' ||
       coalesce((SELECT b.le FROM bounds b WHERE b.histogram = o.histogram AND o.value <= b.bound
                  ORDER BY b.bound LIMIT 1), '+Inf'), count(*)
  FROM observed o GROUP BY 1, 2
UNION ALL
SELECT histogram || '_sum', 'worker=' || worker, sum(value) FROM observed GROUP BY 1, 2;

-- What retention folded: cumulative counts per bound (without a worker), made per bucket.
INSERT INTO counters (name, labels, value)
SELECT p.metric || '_bucket', 'worker=,le=' ||
       CASE WHEN p.bound = CAST(p.bound AS INTEGER) THEN CAST(CAST(p.bound AS INTEGER) AS TEXT)
            ELSE CAST(p.bound AS TEXT) END,
       p.n - coalesce((SELECT max(q.n) FROM pruned_buckets q
                        WHERE q.metric = p.metric AND q.bound < p.bound), 0)
  FROM pruned_buckets p
UNION ALL
SELECT s.metric || '_bucket', 'worker=,le=+Inf',
       s.count - coalesce((SELECT max(q.n) FROM pruned_buckets q WHERE q.metric = s.metric), 0)
  FROM pruned_sums s
UNION ALL
SELECT metric || '_sum', 'worker=', total FROM pruned_sums;

DROP TABLE observed;
DROP TABLE bounds;

-- The histograms' folds are in the counters now, which retention leaves alone.
DROP TABLE pruned_buckets;
DROP TABLE pruned_sums;
