-- agentq schema, version 7: several daemons, one queue. Which daemon (host id, claim owner) holds
-- each named worker, until when; and the daemons that use the store. SQLite has one daemon (the
-- state folder's lock), whose daemon does not take leases; the tables are here so both backends
-- answer the same interface and suite.
CREATE TABLE worker_leases (
    worker   TEXT    PRIMARY KEY,
    -- The host that holds it, or held it last (a released lease keeps it, so the next holder
    -- knows where the worker's conversation was).
    host     TEXT    NOT NULL,
    owner    TEXT    NOT NULL,
    -- Milliseconds since the epoch; 0 once released.
    expires  INTEGER NOT NULL,
    taken_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE hosts (
    host       TEXT    PRIMARY KEY,
    owner      TEXT    NOT NULL,
    pid        INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    expires    INTEGER NOT NULL
) WITHOUT ROWID;
