-- agentq schema, version 6: what `agentq status` reads of a daemon's run. The highest memory
-- peak of the attempts that started since the daemon did reads this index, not every attempt.
CREATE INDEX attempts_started ON attempts (started_at);
