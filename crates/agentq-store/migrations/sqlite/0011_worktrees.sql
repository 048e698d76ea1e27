-- agentq schema, version 11: tasks that run in a git worktree of their own. `worktree` is the
-- task's record (agentq_core::worktree::Worktree, as JSON; NULL: the task has none), and
-- `worktree_held` says whether that record holds the task in the store (its change is not merged
-- or discarded yet: stage planned, active or ready), kept beside it so that retention can pass
-- such a task by in the statement that picks what to remove, without reading the JSON.
ALTER TABLE tasks ADD COLUMN worktree TEXT;
ALTER TABLE tasks ADD COLUMN worktree_held INTEGER NOT NULL DEFAULT 0;
-- `agentq worktrees` lists the tasks that have a record, by id: a few among many.
CREATE INDEX tasks_worktree ON tasks (id) WHERE worktree IS NOT NULL;
