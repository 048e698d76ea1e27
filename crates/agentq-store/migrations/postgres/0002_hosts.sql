-- agentq schema, version 2: several daemons, one queue. Which daemon (host id, claim owner) holds
-- each named worker, until when (the server's clock, in milliseconds since the epoch); and the
-- daemons that use the database.
CREATE TABLE worker_leases (
    worker   TEXT   PRIMARY KEY,
    -- The host that holds it, or held it last (a released lease keeps it, so the next holder
    -- knows where the worker's conversation was).
    host     TEXT   NOT NULL,
    owner    TEXT   NOT NULL,
    -- 0 once released.
    expires  BIGINT NOT NULL,
    taken_at BIGINT NOT NULL
);

CREATE TABLE hosts (
    host       TEXT   PRIMARY KEY,
    owner      TEXT   NOT NULL,
    pid        BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    expires    BIGINT NOT NULL
);
