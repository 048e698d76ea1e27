-- agentq schema, version 6 (SQLite's 11): tasks that run in a git worktree of their own. The
-- task's record as JSON text (NULL: none), and whether it holds the task in the store (its change
-- is not merged or discarded yet), which retention checks in the statement that removes.
ALTER TABLE tasks ADD COLUMN worktree TEXT;
ALTER TABLE tasks ADD COLUMN worktree_held BOOLEAN NOT NULL DEFAULT false;
-- `agentq worktrees` lists the tasks that have a record, by id: a few among many.
CREATE INDEX tasks_worktree ON tasks (id) WHERE worktree IS NOT NULL;
