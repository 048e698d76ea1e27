-- agentq schema, version 4: the ephemeral pool, and task classes.

-- 1: the task runs in the pool, in a fresh agent process with a conversation of its own (with its
-- worker's settings, or the pool's for worker 'pool'); 0: on its worker, one task at a time.
ALTER TABLE tasks ADD COLUMN pool         INTEGER NOT NULL DEFAULT 0;
-- long or short, with the complexity it was judged by, and why the task runs where it runs.
ALTER TABLE tasks ADD COLUMN class        TEXT;
ALTER TABLE tasks ADD COLUMN complexity   REAL;
ALTER TABLE tasks ADD COLUMN route_reason TEXT;
-- Bytes the task's process tree may hold; overrides its worker's max_memory.
ALTER TABLE tasks ADD COLUMN max_memory   INTEGER;

-- The pool's claim walks this: queued pool tasks, highest priority, oldest first.
CREATE INDEX tasks_pool ON tasks (pool, state, priority DESC, id);
