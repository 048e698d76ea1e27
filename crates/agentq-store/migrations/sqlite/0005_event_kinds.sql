-- agentq schema, version 5: counting events by kind (the /metrics counters of restarts and
-- rejected files) reads this index instead of the whole event table.
CREATE INDEX events_kind ON events (kind, worker);
