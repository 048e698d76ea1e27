//! TLS to PostgreSQL through the real binary, against the test server scripts/test starts with
//! `ssl=on`: its certificate is for `localhost` only, signed by a CA of its own; the files are in
//! `AGENTQ_TEST_PG_TLS` (`ca.crt`, `other-ca.crt` that signed nothing, `client.crt` and
//! `client.key` for the role `agentq_cert`, which pg_hba lets in by certificate only). Each
//! `sslmode` is tried as libpq means it, and every refusal must say what was wrong and what to
//! do, without the password. A server without TLS is a fake on loopback that answers the
//! request for TLS with no.
// Unix end-to-end tests (shell-script agents, signals); Windows has tests/windows.rs.
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use agentq::store::postgres::test_db::{self, TestDb};
use common::*;
use serde_json::Value;

/// The password every URL here carries (the test server trusts loopback for `postgres`, so it
/// is never checked there); it must never be printed.
const PASSWORD: &str = "tls-s3cret-never-shown";

/// The TLS test server's files; `None` (a skip) only where `AGENTQ_TEST_PG=skip` allows it.
fn tls_dir() -> Option<PathBuf> {
    match std::env::var_os("AGENTQ_TEST_PG_TLS") {
        Some(dir) if !dir.is_empty() => Some(dir.into()),
        _ if std::env::var("AGENTQ_TEST_PG").as_deref() == Ok("skip") => {
            eprintln!(
                "skipped: AGENTQ_TEST_PG_TLS is not set (scripts/test sets it, for the server with TLS it starts) and AGENTQ_TEST_PG=skip"
            );
            None
        }
        _ => panic!(
            "the TLS tests need the test server's certificates: run them through scripts/test, which starts a PostgreSQL server with TLS and sets AGENTQ_TEST_PG_TLS, or set AGENTQ_TEST_PG=skip to skip them"
        ),
    }
}

/// A fresh database on the TLS test server.
struct Server {
    db: TestDb,
    tls: PathBuf,
    port: u16,
    dbname: String,
}

fn server() -> Option<Server> {
    let db = pg_database()?;
    let tls = tls_dir()?;
    let config = db.url.config().unwrap();
    Some(Server {
        port: config.get_ports()[0],
        dbname: config.get_dbname().unwrap().to_string(),
        tls,
        db,
    })
}

impl Server {
    /// A URL for `user` (with [`PASSWORD`]) at `host` on the test server's port, with `params`.
    fn url_as(&self, user: &str, host: &str, params: &str) -> String {
        format!(
            "postgres://{user}:{PASSWORD}@{host}:{}/{}?{params}",
            self.port, self.dbname
        )
    }

    fn url(&self, host: &str, params: &str) -> String {
        self.url_as("postgres", host, params)
    }

    fn file(&self, name: &str) -> String {
        self.tls.join(name).display().to_string()
    }

    /// Runs `sql` as the admin.
    fn admin(&self, sql: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, _driver) = test_db::connect(&self.db.url).await.unwrap();
            client.batch_execute(sql).await.unwrap();
        });
    }
}

fn project_on(url: &str) -> Project {
    let p = Project::with_workers(
        &["w"],
        RECORDING_AGENT,
        &format!("[store]\nurl = \"{url}\"\n"),
    );
    std::fs::create_dir_all(p.path("home")).unwrap();
    p
}

/// `agentq` with a HOME of the project's own (no `~/.postgresql/` files of the machine's).
fn run(p: &Project, args: &[&str]) -> std::process::Output {
    p.cmd(args)
        .env("HOME", p.path("home"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// `agentq doctor --json`'s checks by name, after checking that no output shows the password.
fn doctor(p: &Project) -> std::collections::HashMap<String, Value> {
    let out = run(p, &["doctor", "--json"]);
    let stdout = text(&out.stdout);
    for shown in [&stdout, &text(&out.stderr)] {
        assert!(!shown.contains(PASSWORD), "{shown}");
    }
    let checks: Vec<Value> =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    checks
        .into_iter()
        .map(|c| (c["check"].as_str().unwrap().to_string(), c))
        .collect()
}

/// The database and encryption checks of `agentq doctor` on a project whose store is `url`.
fn check(url: &str) -> (Value, Value) {
    let p = project_on(url);
    let mut checks = doctor(&p);
    (
        checks.remove("database").unwrap(),
        checks.remove("encryption").unwrap(),
    )
}

fn status(check: &Value) -> &str {
    check["status"].as_str().unwrap()
}

fn detail(check: &Value) -> &str {
    check["detail"].as_str().unwrap()
}

/// A check that failed; its detail, which names what to do.
fn failed(check: &Value) -> String {
    assert_eq!(status(check), "fail", "{check}");
    let why = format!("{} / fix: {}", detail(check), check["fix"]);
    eprintln!("refused: {why}");
    why
}

/// An encryption check of a TLS session, as the server reports it (`pg_stat_ssl`).
fn assert_encrypted(database: &Value, encryption: &Value) {
    assert_eq!(status(database), "ok", "{database}");
    assert_eq!(status(encryption), "ok", "{encryption}");
    assert!(
        detail(encryption).starts_with("TLS (TLSv1."),
        "{encryption}"
    );
    eprintln!("encrypted: {}", detail(encryption));
}

#[test]
fn verify_full_with_the_right_ca_runs_tasks_on_encrypted_connections() {
    let Some(s) = server() else { return };
    let url = s.url(
        "localhost",
        &format!(
            "hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
            s.file("ca.crt")
        ),
    );
    let p = project_on(&url);
    let checks = doctor(&p);
    let (database, encryption) = (&checks["database"], &checks["encryption"]);
    assert_encrypted(database, encryption);
    assert!(
        detail(encryption).contains("certificate and host name verified against"),
        "{encryption}"
    );
    // The shown URL names the TLS settings (not secrets), not the password.
    assert!(
        detail(database).contains(&format!(
            ":***@localhost:{}/{}?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
            s.port,
            s.dbname,
            s.file("ca.crt")
        )),
        "{database}"
    );

    let daemon = p.start_with({
        let mut cmd = p.cmd(&["run"]);
        cmd.env("HOME", p.path("home"));
        cmd
    });
    let ids: Vec<i64> = (0..3)
        .map(|i| p.submit("w", &format!("task {i}")))
        .collect();
    p.wait_all(&ids);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(p.output(*id), format!("done: task {i}"));
    }
    // Every connection agentq holds to the database (the pool's, the listener's, the host
    // id's) is encrypted, as the server sees it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (plain, all): (i64, i64) = rt.block_on(async {
        let (client, _driver) = test_db::connect(&s.db.url).await.unwrap();
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE NOT s.ssl), count(*) \
                 FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    });
    assert!(all >= 2, "{all} connections");
    assert_eq!(plain, 0, "{plain} of {all} connections are not encrypted");
    let log = daemon.log();
    assert!(!log.contains(PASSWORD), "{log}");
}

#[test]
fn verify_full_refuses_a_certificate_made_out_to_another_name() {
    let Some(s) = server() else { return };
    // The certificate is for localhost; 127.0.0.1 is not a name it holds.
    let url = s.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", s.file("ca.crt")),
    );
    let p = project_on(&url);
    let checks = doctor(&p);
    let why = failed(&checks["database"]);
    assert!(why.contains("hostname mismatch"), "{why}");
    assert!(why.contains("is for localhost, not 127.0.0.1"), "{why}");
    assert!(why.contains("sslmode=verify-ca"), "{why}");
    assert!(
        why.contains("correct the TLS settings of [store] url"),
        "{why}"
    );
    assert_eq!(status(&checks["encryption"]), "skip");
    // Any command that opens the store says the same.
    let out = run(&p, &["submit", "-w", "w", "hello"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("hostname mismatch"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
}

#[test]
fn verify_ca_checks_who_signed_the_certificate_and_not_the_name() {
    let Some(s) = server() else { return };
    let (database, encryption) = check(&s.url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}", s.file("ca.crt")),
    ));
    assert_encrypted(&database, &encryption);
    assert!(
        detail(&encryption).contains("host name not checked (sslmode=verify-ca)"),
        "{encryption}"
    );

    // Another CA: not trusted, and the message names the file and what to set.
    for mode in ["verify-ca", "verify-full", "require"] {
        let (database, _) = check(&s.url(
            "localhost",
            &format!(
                "hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={}",
                s.file("other-ca.crt")
            ),
        ));
        let why = failed(&database);
        assert!(
            why.contains("the server's certificate is not trusted"),
            "{why}"
        );
        assert!(
            why.contains(&format!(
                "not signed by a CA of sslrootcert {}",
                s.file("other-ca.crt")
            )),
            "{why}"
        );
        assert!(
            why.contains("set sslrootcert to the PEM file of the CA"),
            "{why}"
        );
        if mode == "require" {
            // As libpq: a root certificate makes require check the chain.
            assert!(
                why.contains("sslmode=require checks it when a root certificate is given"),
                "{why}"
            );
        }
    }

    // The system's CAs did not sign the test CA's certificate.
    let (database, _) = check(&s.url("localhost", "hostaddr=127.0.0.1&sslrootcert=system"));
    let why = failed(&database);
    assert!(why.contains("sslrootcert"), "{why}");

    // verify-* with no root certificate at all: libpq's default file is missing.
    let (database, _) = check(&s.url("localhost", "hostaddr=127.0.0.1&sslmode=verify-ca"));
    let why = failed(&database);
    assert!(why.contains("set sslrootcert to the PEM file"), "{why}");
    assert!(
        why.contains(".postgresql/root.crt, which does not exist"),
        "{why}"
    );

    // ... which is read when it exists, as libpq does.
    let p = project_on(&s.url("localhost", "hostaddr=127.0.0.1&sslmode=verify-full"));
    std::fs::create_dir_all(p.path("home/.postgresql")).unwrap();
    std::fs::copy(s.file("ca.crt"), p.path("home/.postgresql/root.crt")).unwrap();
    let checks = doctor(&p);
    assert_encrypted(&checks["database"], &checks["encryption"]);
}

#[test]
fn require_prefer_and_disable_encrypt_as_libpq_does() {
    let Some(s) = server() else { return };
    // require without a root certificate: encrypted, nothing checked (said so; on loopback
    // that is no warning).
    let (database, encryption) = check(&s.url("127.0.0.1", "sslmode=require"));
    assert_encrypted(&database, &encryption);
    assert!(
        detail(&encryption).contains("certificate is not verified (sslmode=require)"),
        "{encryption}"
    );
    // prefer, given or by default: encrypted, as the server offers TLS.
    for params in ["sslmode=prefer", "application_name=x"] {
        let (database, encryption) = check(&s.url("127.0.0.1", params));
        assert_encrypted(&database, &encryption);
        assert!(
            detail(&encryption).contains("(sslmode=prefer)"),
            "{encryption}"
        );
    }
    // disable: plain, as the server sees it.
    let (database, encryption) = check(&s.url("127.0.0.1", "sslmode=disable"));
    assert_eq!(status(&database), "ok", "{database}");
    assert_eq!(status(&encryption), "ok", "{encryption}");
    assert_eq!(detail(&encryption), "none (sslmode=disable)");
    // The key=value form takes the same settings.
    let (database, encryption) = check(&format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=postgres password={PASSWORD} dbname={} sslmode=verify-full sslrootcert='{}'",
        s.port,
        s.dbname,
        s.file("ca.crt")
    ));
    assert_encrypted(&database, &encryption);
    assert!(
        detail(&encryption).contains("certificate and host name verified"),
        "{encryption}"
    );
    assert!(detail(&database).contains("password=*** "), "{database}");
}

/// A server without TLS: a fake on loopback that answers the request for TLS with `N`, then,
/// to a client that goes on without it, refuses the login with an error of its own. Serves
/// `count` connections, then stops.
fn no_tls_server(count: usize) -> (u16, std::thread::JoinHandle<Vec<&'static str>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let serve = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..count {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut message = [0u8; 8];
            conn.read_exact(&mut message).unwrap();
            // Length 8, then the SSLRequest code 80877103.
            assert_eq!(
                message,
                [0, 0, 0, 8, 4, 210, 22, 47],
                "not a request for TLS"
            );
            conn.write_all(b"N").unwrap();
            let mut head = [0u8; 8];
            if conn.read_exact(&mut head).is_err() {
                seen.push("closed after no");
                continue;
            }
            // A StartupMessage: its length, then protocol 3.0, in the clear.
            assert_eq!(head[4..], [0, 3, 0, 0], "not a startup message");
            seen.push("startup in the clear");
            let mut fields = Vec::new();
            for (kind, value) in [
                (b'S', "FATAL"),
                (b'C', "28000"),
                (b'M', "no login on this fake server"),
            ] {
                fields.push(kind);
                fields.extend_from_slice(value.as_bytes());
                fields.push(0);
            }
            fields.push(0);
            let mut reply = vec![b'E'];
            reply.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
            reply.extend_from_slice(&fields);
            let _ = conn.write_all(&reply);
        }
        seen
    });
    (port, serve)
}

#[test]
fn a_server_without_tls_is_refused_under_require_and_used_under_prefer() {
    // No database needed: the fake is the server.
    let (port, serve) = no_tls_server(2);
    let url =
        |mode: &str| format!("postgres://agentq:{PASSWORD}@127.0.0.1:{port}/queue?sslmode={mode}");
    let (database, encryption) = check(&url("require"));
    let why = failed(&database);
    assert!(why.contains("the server does not support TLS"), "{why}");
    assert!(why.contains("set sslmode=prefer or disable"), "{why}");
    assert_eq!(status(&encryption), "skip");
    // prefer goes on in the clear, as libpq does: the fake sees a startup message.
    let (database, _) = check(&url("prefer"));
    let why = failed(&database);
    assert!(why.contains("no login on this fake server"), "{why}");
    assert_eq!(
        serve.join().unwrap(),
        ["closed after no", "startup in the clear"]
    );
}

#[test]
fn a_client_certificate_logs_in_where_the_server_asks_for_one() {
    let Some(s) = server() else { return };
    // pg_hba: agentq_cert logs in over TLS by certificate only (its CN names the role).
    s.admin(
        "DO $$ BEGIN CREATE ROLE agentq_cert LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    );
    let base = format!(
        "hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
        s.file("ca.crt")
    );
    let with_cert = format!(
        "{base}&sslcert={}&sslkey={}",
        s.file("client.crt"),
        s.file("client.key")
    );
    let (database, encryption) = check(&s.url_as("agentq_cert", "localhost", &with_cert));
    assert_encrypted(&database, &encryption);
    // Without it, the server refuses, in its own words.
    let (database, _) = check(&s.url_as("agentq_cert", "localhost", &base));
    let why = failed(&database);
    assert!(why.contains("certificate"), "{why}");
    // A key that is not there is named.
    let (database, _) = check(&s.url_as(
        "agentq_cert",
        "localhost",
        &format!(
            "{base}&sslcert={}&sslkey=/nonexistent/client.key",
            s.file("client.crt")
        ),
    ));
    let why = failed(&database);
    assert!(why.contains("sslkey /nonexistent/client.key"), "{why}");
    assert!(why.contains("no such file"), "{why}");
}

#[test]
fn scram_with_channel_binding_works_over_tls() {
    let Some(s) = server() else { return };
    // pg_hba: agentq_scram logs in over TLS with a SCRAM password; channel_binding=require
    // makes the login fail unless it is bound to this TLS session (SCRAM-SHA-256-PLUS).
    s.admin(&format!(
        "SET password_encryption = 'scram-sha-256'; \
         DO $$ BEGIN CREATE ROLE agentq_scram LOGIN PASSWORD '{PASSWORD}'; \
         EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    ));
    let params = format!(
        "hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}&channel_binding=require",
        s.file("ca.crt")
    );
    let (database, encryption) = check(&s.url_as("agentq_scram", "localhost", &params));
    assert_encrypted(&database, &encryption);
    let wrong = s
        .url_as("agentq_scram", "localhost", &params)
        .replace(PASSWORD, "wrong-password");
    let (database, _) = check(&wrong);
    let why = failed(&database);
    assert!(why.contains("password authentication failed"), "{why}");
}
