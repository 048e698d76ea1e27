//! A PostgreSQL connection string that keeps its password to itself.
//!
//! [`DatabaseUrl`] holds the string as the user wrote it (`postgres://user:secret@host/db` or the
//! `host=... password=...` key=value form), and shows a form rebuilt from what tokio-postgres
//! parsed of it: user, hosts, ports, database and the other settings, with `***` for a password.
//! Nothing is copied from the text itself, so no way of writing a password (an unencoded `/`, `?`
//! or `#` in it, a percent-encoded `password` key, `://` in some value of the key=value form) can
//! reach a log line, an error, a `doctor` check or a `status` line: the shown form is what the
//! connection will use, password aside. Only the store reads the real string, through
//! [`DatabaseUrl::expose`].
//!
//! libpq's TLS settings that tokio-postgres does not read (`sslmode=verify-ca|verify-full`,
//! `sslrootcert`, `sslcert`, `sslkey`) are taken out here ([`split`]) into [`TlsSettings`],
//! and the rest is what tokio-postgres reads ([`DatabaseUrl::for_driver`]); the shown form
//! names them again. They are paths, not secrets.

use std::fmt;
use std::fmt::Write as _;
use std::time::Duration;

use tokio_postgres::Config;
use tokio_postgres::config::{
    ChannelBinding, Host, LoadBalanceHosts, SslNegotiation, TargetSessionAttrs,
};

use super::tls::{RootCert, SslMode, TlsSettings};

/// What stands where a password was.
const HIDDEN: &str = "***";

/// What stands for a string that is not a connection string (nothing of it can be told apart
/// from a password).
const UNREADABLE: &str = "(an unreadable connection string)";

/// The settings a connection string may hold, as tokio-postgres names them.
const KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslmode",
    "sslnegotiation",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
    "sslrootcert",
    "sslcert",
    "sslkey",
];

/// The settings agentq reads itself: tokio-postgres does not know the last three, nor
/// `sslmode`'s `allow`, `verify-ca` and `verify-full`.
const TLS_KEYS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// A connection string whose password never reaches a log or a message.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    secret: String,
    /// `secret` less the settings tokio-postgres does not read: what it is given.
    driver: String,
    tls: TlsSettings,
    /// The form that is shown, made once.
    shown: String,
    /// Where it came from, for messages: `[store] url` or `AGENTQ_DATABASE_URL`.
    pub origin: &'static str,
}

impl DatabaseUrl {
    /// Checks that `text` is a PostgreSQL connection string (a URL or key=value pairs) that
    /// tokio-postgres can use. The error says what is wrong without quoting the string.
    pub fn parse(text: &str, origin: &'static str) -> Result<DatabaseUrl, String> {
        let text = text.trim();
        let expected = "\"postgres://user:password@host:5432/dbname\" or \"host=... dbname=...\"";
        match url_scheme(text) {
            Some("postgres" | "postgresql") => {}
            Some(other) => {
                return Err(format!(
                    "{origin} must be a PostgreSQL connection string, {expected}, not a {other}:// URL"
                ));
            }
            None if !text.contains('=') => {
                return Err(format!(
                    "{origin} must be a PostgreSQL connection string, {expected}; it is neither a URL nor key=value pairs"
                ));
            }
            None => {}
        }
        let invalid =
            |why: String| format!("{origin} is not a valid PostgreSQL connection string: {why}");
        let (driver, tls) = split(text).map_err(invalid)?;
        let config: Config = driver
            .parse()
            .map_err(|e: tokio_postgres::Error| invalid(parse_error(&e)))?;
        Ok(DatabaseUrl {
            shown: show(&config, &tls, url_scheme(text)),
            secret: text.to_string(),
            driver,
            tls,
            origin,
        })
    }

    /// The connection string as written, password and all: never for printing.
    pub fn expose(&self) -> &str {
        &self.secret
    }

    /// What tokio-postgres reads of the connection string (password and all: never for
    /// printing): the string less the TLS settings of [`DatabaseUrl::tls`], `sslmode` included.
    /// [`DatabaseUrl::config`] reads it and sets `sslmode` as tokio-postgres knows it.
    pub fn for_driver(&self) -> &str {
        &self.driver
    }

    /// The settings tokio-postgres connects with (the TLS connector aside): those of
    /// [`DatabaseUrl::for_driver`], and `sslmode` as [`SslMode::for_driver`] says.
    pub fn config(&self) -> Result<Config, tokio_postgres::Error> {
        let mut config: Config = self.driver.parse()?;
        config.ssl_mode(self.tls.mode.for_driver());
        Ok(config)
    }

    /// The TLS settings, as libpq reads them.
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// The connection string with its password hidden.
    pub fn redacted(&self) -> String {
        self.shown.clone()
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({:?})", self.shown)
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// `text` as it may be shown: rebuilt from its parsed settings with the password hidden, in the
/// form it was written in (a URL keeps its scheme). A string that does not parse shows nothing
/// of itself.
pub fn redact(text: &str) -> String {
    let text = text.trim();
    let Ok((driver, tls)) = split(text) else {
        return UNREADABLE.to_string();
    };
    match driver.parse::<Config>() {
        Ok(config) => show(&config, &tls, url_scheme(text)),
        Err(_) => UNREADABLE.to_string(),
    }
}

/// `text` less libpq's TLS settings, which tokio-postgres does not read (or not all of their
/// values), and those settings: `sslmode`, `sslrootcert`, `sslcert` and `sslkey` are taken out.
/// The rest is left as written, for tokio-postgres to read (and to refuse, if it does not read
/// it): in the key=value form what is taken out becomes spaces, so the byte offsets of its
/// messages still point into `text`. The last of a repeated setting wins, as in tokio-postgres.
pub fn split(text: &str) -> Result<(String, TlsSettings), String> {
    let mut found: Vec<(String, String)> = Vec::new();
    let driver = match url_scheme(text) {
        Some(_) => split_url(text, &mut found),
        None => split_pairs(text, &mut found),
    };
    let mut tls = TlsSettings::default();
    let mut mode = None;
    for (key, value) in found {
        let path = (!value.is_empty()).then(|| std::path::PathBuf::from(&value));
        match key.as_str() {
            "sslmode" => {
                mode = Some(SslMode::parse(&value).ok_or_else(|| {
                    format!(
                        "invalid value for option `sslmode` (one of {})",
                        SslMode::NAMES
                    )
                })?)
            }
            "sslrootcert" if value == "system" => tls.rootcert = Some(RootCert::System),
            "sslrootcert" => tls.rootcert = path.map(RootCert::File),
            "sslcert" => tls.cert = path,
            _ => tls.key = path,
        }
    }
    tls.mode = match (mode, &tls.rootcert) {
        // libpq 16: the system's CAs vouch for any name someone got a certificate for, so
        // only verify-full means anything with them.
        (None, Some(RootCert::System)) => SslMode::VerifyFull,
        (Some(weak), Some(RootCert::System)) if weak != SslMode::VerifyFull => {
            return Err(format!(
                "sslmode={} may not be used with sslrootcert=system (use verify-full, or leave sslmode out: anyone can get a certificate from a public CA for a name of their own, so only the host name check means anything)",
                weak.name()
            ));
        }
        (mode, _) => mode.unwrap_or_default(),
    };
    Ok((driver, tls))
}

/// [`split`] of a URL: its query parameters, read as tokio-postgres reads them (the
/// user-info runs to the first `@`, the query starts at the first `?` after it; each parameter
/// runs to its `=`, its value to the next `&`; both percent-decoded).
fn split_url(text: &str, found: &mut Vec<(String, String)>) -> String {
    let rest = text.find("://").map_or(0, |i| i + 3);
    let after_user = text[rest..].find('@').map_or(rest, |i| rest + i + 1);
    let Some(q) = text[after_user..].find('?').map(|i| after_user + i) else {
        return text.to_string();
    };
    let mut kept: Vec<String> = Vec::new();
    let mut query = &text[q + 1..];
    while !query.is_empty() {
        let Some(eq) = query.find('=') else {
            // tokio-postgres refuses it ("unterminated parameter").
            kept.push(query.to_string());
            break;
        };
        let end = query[eq..].find('&').map_or(query.len(), |i| eq + i);
        let (raw_key, raw_value) = (&query[..eq], &query[eq + 1..end]);
        let next = if end < query.len() { end + 1 } else { end };
        match decode(raw_key).as_deref() {
            Some(k) if TLS_KEYS.contains(&k) => match decode(raw_value) {
                Some(value) => found.push((k.to_string(), value)),
                None => kept.push(query[..end].to_string()),
            },
            _ => kept.push(query[..end].to_string()),
        }
        query = &query[next..];
    }
    match kept.is_empty() {
        true => text[..q].to_string(),
        false => format!("{}?{}", &text[..q], kept.join("&")),
    }
}

/// Percent-decodes `text` as UTF-8; `None` if it is not (tokio-postgres refuses it then).
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap() * 16 + hex(l).unwrap()) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// [`split`] of the key=value form, read as tokio-postgres reads it: `key = value` pairs
/// apart by spaces, a value in single quotes or up to the next space, `\` escaping the next
/// character in either. What is taken out becomes spaces. The reading stops where
/// tokio-postgres's would fail or stop, and leaves the rest to it.
fn split_pairs(text: &str, found: &mut Vec<(String, String)>) -> String {
    let mut out = text.to_string();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let at = |i: usize| chars.get(i).map_or(text.len(), |&(b, _)| b);
    let mut i = 0;
    loop {
        while i < chars.len() && chars[i].1.is_whitespace() {
            i += 1;
        }
        let start = i;
        while i < chars.len() && !chars[i].1.is_whitespace() && chars[i].1 != '=' {
            i += 1;
        }
        if i == start {
            break;
        }
        let key = &text[at(start)..at(i)];
        while i < chars.len() && chars[i].1.is_whitespace() {
            i += 1;
        }
        if i >= chars.len() || chars[i].1 != '=' {
            break;
        }
        i += 1;
        while i < chars.len() && chars[i].1.is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i].1 == '\'' {
            i += 1;
            while i < chars.len() && chars[i].1 != '\'' {
                if chars[i].1 == '\\' {
                    i += 1;
                }
                if let Some(&(_, c)) = chars.get(i) {
                    value.push(c);
                }
                i += 1;
            }
            if i >= chars.len() {
                break;
            }
            i += 1;
        } else {
            while i < chars.len() && !chars[i].1.is_whitespace() {
                if chars[i].1 == '\\' {
                    i += 1;
                }
                if let Some(&(_, c)) = chars.get(i) {
                    value.push(c);
                }
                i += 1;
            }
            if value.is_empty() {
                break;
            }
        }
        let span = at(start)..at(i.min(chars.len()));
        let width = span.len();
        if TLS_KEYS.contains(&key) {
            found.push((key.to_string(), value));
            out.replace_range(span, &" ".repeat(width));
        }
    }
    out
}

/// The scheme of a URL (`postgres` of `postgres://...`); `None` for the key=value form, whose
/// keys are followed by `=`, never by `://`.
fn url_scheme(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

/// Writes `config` and `tls` as a URL with `scheme`, or (`None`) as key=value pairs, its
/// password as [`HIDDEN`]. Settings at their defaults are left out, except the ports a URL
/// always has.
fn show(config: &Config, tls: &TlsSettings, scheme: Option<&str>) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            Host::Unix(path) => path.to_string_lossy().into_owned(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    let password = config.get_password().is_some();
    let settings = settings(config, tls);
    let Some(scheme) = scheme else {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if !hosts.is_empty() {
            pairs.push(("host", hosts.join(",")));
        }
        pairs.extend(settings.iter().filter(|(k, _)| *k == "hostaddr").cloned());
        if !ports.is_empty() {
            pairs.push(("port", ports.join(",")));
        }
        if let Some(user) = config.get_user() {
            pairs.push(("user", user.to_string()));
        }
        if password {
            pairs.push(("password", HIDDEN.to_string()));
        }
        if let Some(dbname) = config.get_dbname() {
            pairs.push(("dbname", dbname.to_string()));
        }
        pairs.extend(settings.into_iter().filter(|(k, _)| *k != "hostaddr"));
        return pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect::<Vec<_>>()
            .join(" ");
    };
    let mut out = format!("{scheme}://");
    if let Some(user) = config.get_user() {
        out.push_str(&encode(user, ""));
    }
    if password {
        let _ = write!(out, ":{HIDDEN}");
    }
    if config.get_user().is_some() || password {
        out.push('@');
    }
    // Each host with its port, when there is one per host (as a URL always has).
    let ports_inline = !hosts.is_empty() && ports.len() == hosts.len();
    let authority: Vec<String> = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = if host.contains(':') && !host.starts_with('/') {
                format!("[{host}]")
            } else {
                encode(host, "")
            };
            match ports_inline {
                true => format!("{host}:{}", ports[i]),
                false => host,
            }
        })
        .collect();
    out.push_str(&authority.join(","));
    if let Some(dbname) = config.get_dbname() {
        let _ = write!(out, "/{}", encode(dbname, ""));
    }
    let mut query: Vec<(&str, String)> = Vec::new();
    if !ports_inline && !ports.is_empty() {
        query.push(("port", ports.join(",")));
    }
    query.extend(settings);
    for (i, (key, value)) in query.iter().enumerate() {
        let sep = if i == 0 { '?' } else { '&' };
        // A value ends at '&'; '=', ',', ':' and '/' are kept, for reading.
        let _ = write!(out, "{sep}{key}={}", encode(value, "=,:/"));
    }
    out
}

/// The settings of `config` and `tls` beyond where to connect and as whom, those not at their
/// defaults.
fn settings(config: &Config, tls: &TlsSettings) -> Vec<(&'static str, String)> {
    let secs = |d: &Duration| d.as_secs().to_string();
    let mut out: Vec<(&'static str, String)> = Vec::new();
    let addrs = config.get_hostaddrs();
    if !addrs.is_empty() {
        let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        out.push(("hostaddr", addrs.join(",")));
    }
    if let Some(options) = config.get_options() {
        out.push(("options", options.to_string()));
    }
    if let Some(name) = config.get_application_name() {
        out.push(("application_name", name.to_string()));
    }
    if tls.mode != SslMode::Prefer {
        out.push(("sslmode", tls.mode.name().into()));
    }
    match &tls.rootcert {
        Some(RootCert::System) => out.push(("sslrootcert", "system".into())),
        Some(RootCert::File(path)) => out.push(("sslrootcert", path.display().to_string())),
        None => {}
    }
    if let Some(path) = &tls.cert {
        out.push(("sslcert", path.display().to_string()));
    }
    if let Some(path) = &tls.key {
        out.push(("sslkey", path.display().to_string()));
    }
    if let SslNegotiation::Direct = config.get_ssl_negotiation() {
        out.push(("sslnegotiation", "direct".into()));
    }
    if let Some(d) = config.get_connect_timeout() {
        out.push(("connect_timeout", secs(d)));
    }
    if let Some(d) = config.get_tcp_user_timeout() {
        out.push(("tcp_user_timeout", secs(d)));
    }
    if !config.get_keepalives() {
        out.push(("keepalives", "0".into()));
    }
    let idle = config.get_keepalives_idle();
    if idle != Config::new().get_keepalives_idle() {
        out.push(("keepalives_idle", secs(&idle)));
    }
    if let Some(d) = config.get_keepalives_interval() {
        out.push(("keepalives_interval", secs(&d)));
    }
    if let Some(n) = config.get_keepalives_retries() {
        out.push(("keepalives_retries", n.to_string()));
    }
    match config.get_target_session_attrs() {
        TargetSessionAttrs::ReadWrite => out.push(("target_session_attrs", "read-write".into())),
        TargetSessionAttrs::ReadOnly => out.push(("target_session_attrs", "read-only".into())),
        _ => {}
    }
    match config.get_channel_binding() {
        ChannelBinding::Disable => out.push(("channel_binding", "disable".into())),
        ChannelBinding::Require => out.push(("channel_binding", "require".into())),
        _ => {}
    }
    if let LoadBalanceHosts::Random = config.get_load_balance_hosts() {
        out.push(("load_balance_hosts", "random".into()));
    }
    out
}

/// Percent-encodes all but URL-safe characters and those of `keep`.
fn encode(text: &str, keep: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || keep.as_bytes().contains(&b)
        {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A key=value value, quoted when it must be (libpq's rules: empty, or holding a space, `'` or
/// `\`).
fn quote(value: &str) -> String {
    if !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return value.to_string();
    }
    let mut out = String::from("'");
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Why tokio-postgres refused a connection string, without quoting it: its messages name a
/// setting (safe), a byte offset, or, for an unknown key or an unexpected character, a piece of
/// the text, which may be part of a password written without quotes. Those pieces are left out.
fn parse_error(e: &tokio_postgres::Error) -> String {
    let why = std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.to_string());
    if let Some(key) = why
        .strip_prefix("unknown option `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        return match KEYS.iter().find(|k| k.eq_ignore_ascii_case(key)) {
            Some(known) => format!("unknown option (setting names are lower case: `{known}`)"),
            None => format!("unknown option (the known ones: {})", KEYS.join(", ")),
        };
    }
    if let Some((at, _)) = why.split_once(": expected")
        && at.starts_with("unexpected character at byte")
    {
        return format!("{at} (a value with spaces must be in single quotes)");
    }
    why
}

/// Replaces the password of `url`, if it appears in `message`, by `***`.
pub fn hide_password_in(message: &str, url: &str) -> String {
    let driver = split(url).map_or_else(|_| url.to_string(), |(driver, _)| driver);
    match driver.parse::<Config>() {
        Ok(config) => match config.get_password() {
            Some(p) if !p.is_empty() => {
                let password = String::from_utf8_lossy(p);
                message.replace(password.as_ref(), HIDDEN)
            }
            _ => message.to_string(),
        },
        // Unparsable: the password cannot be told apart; say nothing quoted from the string.
        Err(_) => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Config {
        text.parse()
            .unwrap_or_else(|e| panic!("tokio-postgres refuses {text}: {e}"))
    }

    #[test]
    fn urls_keep_all_but_the_password() {
        for (given, shown) in [
            (
                "postgres://agentq:s3cret@db.example:5432/queue",
                "postgres://agentq:***@db.example:5432/queue",
            ),
            (
                "postgresql://agentq:p%40ss@db/queue?sslmode=disable",
                "postgresql://agentq:***@db:5432/queue?sslmode=disable",
            ),
            // The user-info ends at the first '@' (tokio-postgres's reading): the host is what
            // follows, '@' and all, and that is what is shown.
            (
                "postgres://u:a@b@host/db",
                "postgres://u:***@b%40host:5432/db",
            ),
            ("postgres://u@host/db", "postgres://u@host:5432/db"),
            ("postgres://host/db", "postgres://host:5432/db"),
            // Query parameters win over the user-info, as they do when connecting.
            (
                "postgres://u@host/db?user=x&password=hunter2&application_name=a",
                "postgres://x:***@host:5432/db?application_name=a",
            ),
            (
                "postgres://u:pw@h1:5432,h2:5433/db",
                "postgres://u:***@h1:5432,h2:5433/db",
            ),
            (
                "postgres://u:pw@[::1]:6000/db?options=-csearch_path%3Dagentq&connect_timeout=3",
                "postgres://u:***@[::1]:6000/db?options=-csearch_path=agentq&connect_timeout=3",
            ),
            (
                "postgres://u@%2Fvar%2Frun%2Fpostgresql/db",
                "postgres://u@%2Fvar%2Frun%2Fpostgresql:5432/db",
            ),
        ] {
            assert_eq!(redact(given), shown, "{given}");
        }
    }

    #[test]
    fn key_value_strings_keep_all_but_the_password() {
        for (given, shown) in [
            (
                "host=db user=agentq password=s3cret dbname=queue",
                "host=db user=agentq password=*** dbname=queue",
            ),
            (
                "host=db password = 'with space \\' and quote' dbname=q",
                "host=db password=*** dbname=q",
            ),
            ("host=h user=u", "host=h user=u"),
            (
                "dbname=q port=5433 host=/tmp,db options='-c search_path=agentq' password=x",
                "host=/tmp,db port=5433 password=*** dbname=q options='-c search_path=agentq'",
            ),
        ] {
            assert_eq!(redact(given), shown, "{given}");
        }
    }

    /// However a password is written, if tokio-postgres reads it as the password it is not shown.
    #[test]
    fn a_password_written_any_way_tokio_postgres_reads_is_never_shown() {
        for (text, password) in [
            // Unencoded '/', '?' or '#': the user-info runs to the first '@' wherever it is.
            ("postgres://agentq:ab/cd@db.example:5432/queue", "ab/cd"),
            ("postgres://agentq:ab?cd@db.example:5432/queue", "ab?cd"),
            ("postgres://agentq:ab#cd@db.example:5432/queue", "ab#cd"),
            // A percent-encoded key is decoded: `p%61ssword` is `password`.
            ("postgres://u@db/q?p%61ssword=s3cret", "s3cret"),
            ("postgres://u@db/q?password=s3%63ret", "s3cret"),
            // The key=value form with "://" in some value, the password's or another's.
            (
                "host=db password=s3cret application_name=http://x",
                "s3cret",
            ),
            ("host=db password=s3cr://et", "s3cr://et"),
            ("host=db password='s3 cr\\'et'", "s3 cr'et"),
            ("host=db password=s3\\ cret", "s3 cret"),
        ] {
            assert_eq!(
                parsed(text).get_password(),
                Some(password.as_bytes()),
                "{text}"
            );
            let url = DatabaseUrl::parse(text, "[store] url").unwrap();
            for shown in [
                format!("{url}"),
                format!("{url:?}"),
                url.redacted(),
                redact(text),
            ] {
                assert!(shown.contains(HIDDEN), "{text}: {shown}");
                for piece in [
                    password, "s3c", "cret", "b/c", "b?c", "b#c", "b%2Fc", "b%3Fc",
                ] {
                    assert!(!shown.contains(piece), "{text}: {piece:?} shown in {shown}");
                }
                assert!(shown.contains("db"), "{text}: {shown}");
            }
        }
    }

    /// The shown form reads back as the same connection, with `***` for its password.
    #[test]
    fn the_shown_form_names_the_same_connection() {
        for text in [
            "postgres://agentq:s3cret@db.example:5432/queue?application_name=me&sslmode=require",
            "postgresql://u%20v:pw@h1,h2:5433/d%2Fb?options=-c%20search_path%3Dx&target_session_attrs=read-write",
            "postgres://u@%2Ftmp:5433/db",
            "host=db,db2 port=1,2 user='a b' password=x dbname=q keepalives_idle=40 connect_timeout=5",
            "host=db hostaddr=127.0.0.1 user=u",
        ] {
            let given = parsed(text);
            let shown = parsed(&redact(text));
            assert_eq!(
                shown.get_password(),
                given.get_password().map(|_| HIDDEN.as_bytes())
            );
            assert_eq!(shown.get_user(), given.get_user(), "{text}");
            assert_eq!(shown.get_hosts(), given.get_hosts(), "{text}");
            assert_eq!(shown.get_hostaddrs(), given.get_hostaddrs(), "{text}");
            assert_eq!(shown.get_ports(), given.get_ports(), "{text}");
            assert_eq!(shown.get_dbname(), given.get_dbname(), "{text}");
            assert_eq!(shown.get_options(), given.get_options(), "{text}");
            assert_eq!(shown.get_application_name(), given.get_application_name());
            assert_eq!(shown.get_ssl_mode(), given.get_ssl_mode(), "{text}");
            assert_eq!(shown.get_connect_timeout(), given.get_connect_timeout());
            assert_eq!(shown.get_keepalives_idle(), given.get_keepalives_idle());
            assert_eq!(
                shown.get_target_session_attrs(),
                given.get_target_session_attrs()
            );
        }
    }

    #[test]
    fn the_wrapper_never_shows_its_password() {
        for text in [
            "postgres://agentq:s3cret@localhost/queue",
            "host=localhost user=agentq password=s3cret",
        ] {
            let url = DatabaseUrl::parse(text, "[store] url").unwrap();
            assert_eq!(url.expose(), text);
            for shown in [format!("{url}"), format!("{url:?}"), url.redacted()] {
                assert!(!shown.contains("s3cret"), "{shown}");
                assert!(shown.contains("localhost"), "{shown}");
            }
        }
    }

    #[test]
    fn what_is_not_a_connection_string_is_refused_without_its_password() {
        let e = DatabaseUrl::parse("mysql://root:s3cret@h/db", "[store] url").unwrap_err();
        assert!(e.contains("must be a PostgreSQL connection string"), "{e}");
        assert!(e.contains("not a mysql:// URL"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = DatabaseUrl::parse("s3cret", "[store] url").unwrap_err();
        assert!(e.contains("must be a PostgreSQL connection string"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        for (text, says) in [
            ("host=h password=s3cret sslmode=sometimes", "`sslmode`"),
            ("postgres://u:s3cret@h/d?sslmode=sometimes", "`sslmode`"),
            ("postgres://u:s3cret@h:port/d", "`port`"),
            // Keys are lower case; a wrong one is not quoted (it may be a piece of a password
            // written with a space and no quotes).
            ("PASSWORD=s3cret host=h", "lower case: `password`"),
            ("host=h password=s3 cret=x", "the known ones: host"),
            ("host=h password=s3 cret", "unexpected EOF"),
            (
                "host=h password=s3 cret x=y",
                "unexpected character at byte",
            ),
            ("host=h password='s3cret", "unterminated"),
        ] {
            let e = DatabaseUrl::parse(text, "X").unwrap_err();
            assert!(
                e.contains("X is not a valid PostgreSQL connection string"),
                "{e}"
            );
            assert!(e.contains(says), "{text}: {e}");
            for piece in ["s3", "cret"] {
                assert!(!e.contains(piece), "{text}: {e}");
            }
            assert_eq!(redact(text), UNREADABLE);
        }
        assert_eq!(
            hide_password_in("failed for s3cret", "postgres://u:s3cret@h/d"),
            "failed for ***"
        );
    }

    fn tls_of(text: &str) -> TlsSettings {
        DatabaseUrl::parse(text, "X")
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .tls()
            .clone()
    }

    fn file(path: &str) -> Option<RootCert> {
        Some(RootCert::File(path.into()))
    }

    /// libpq's TLS settings that tokio-postgres does not read are taken out of both forms,
    /// tokio-postgres is given the rest (verify-* as require), and the shown form names them.
    #[test]
    fn tls_settings_are_read_from_both_forms_and_shown() {
        let url = DatabaseUrl::parse(
            "postgres://u:s3cret@db.example/q?sslmode=verify-full&sslrootcert=%2Fetc%2Fmy%20ca.pem&application_name=a",
            "X",
        )
        .unwrap();
        assert_eq!(
            url.for_driver(),
            "postgres://u:s3cret@db.example/q?application_name=a"
        );
        assert_eq!(
            url.config().unwrap().get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(url.tls().mode, SslMode::VerifyFull);
        assert_eq!(url.tls().rootcert, file("/etc/my ca.pem"));
        assert_eq!(
            url.redacted(),
            "postgres://u:***@db.example:5432/q?application_name=a&sslmode=verify-full&sslrootcert=/etc/my%20ca.pem"
        );

        let text = "host=db user=u password=s3cret sslmode=verify-ca sslrootcert='/etc/my ca.pem' sslcert=/c.pem sslkey = /k.pem";
        let url = DatabaseUrl::parse(text, "X").unwrap();
        // What is taken out becomes spaces: tokio-postgres's byte offsets still hold.
        assert_eq!(url.for_driver().len(), text.len());
        assert_eq!(
            url.for_driver().split_whitespace().collect::<Vec<_>>(),
            ["host=db", "user=u", "password=s3cret"]
        );
        assert_eq!(
            url.tls(),
            &TlsSettings {
                mode: SslMode::VerifyCa,
                rootcert: file("/etc/my ca.pem"),
                cert: Some("/c.pem".into()),
                key: Some("/k.pem".into()),
            }
        );
        assert_eq!(
            url.redacted(),
            "host=db user=u password=*** dbname=u sslmode=verify-ca sslrootcert='/etc/my ca.pem' sslcert=/c.pem sslkey=/k.pem"
                .replace(" dbname=u", "")
        );

        // The shown forms read back as the same settings.
        for text in [
            "postgres://u:pw@h/d?sslmode=verify-full&sslrootcert=/a%20b/ca.pem&sslcert=/c&sslkey=/k",
            "host=h sslmode=verify-ca sslrootcert='/a b/ca.pem' password=pw",
            "postgres://h/d?sslrootcert=system",
            "host=h sslmode=disable",
            "host=h sslmode=allow",
        ] {
            let given = DatabaseUrl::parse(text, "X").unwrap();
            let shown = DatabaseUrl::parse(&given.redacted(), "X").unwrap();
            assert_eq!(shown.tls(), given.tls(), "{text} shown as {shown}");
        }
    }

    #[test]
    fn sslmode_follows_libpq() {
        // The default is prefer, shown as nothing; allow is read as prefer by tokio-postgres.
        assert_eq!(tls_of("host=h").mode, SslMode::Prefer);
        let allow = DatabaseUrl::parse("postgres://h/d?sslmode=allow", "X").unwrap();
        assert_eq!(allow.tls().mode, SslMode::Allow);
        assert_eq!(allow.for_driver(), "postgres://h/d");
        assert_eq!(
            allow.config().unwrap().get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
        // The last of a repeated setting wins, in both readers.
        let twice = DatabaseUrl::parse("host=h sslmode=verify-full sslmode=disable", "X").unwrap();
        assert_eq!(twice.tls().mode, SslMode::Disable);
        let config = twice.config().unwrap();
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        // sslrootcert=system means verify-full, and refuses anything weaker (libpq 16).
        let system = tls_of("postgres://h/d?sslrootcert=system");
        assert_eq!(
            (system.mode, system.rootcert),
            (SslMode::VerifyFull, Some(RootCert::System))
        );
        assert_eq!(
            tls_of("host=h sslrootcert=system sslmode=verify-full").mode,
            SslMode::VerifyFull
        );
        for weak in ["require", "verify-ca", "prefer", "disable"] {
            let e = DatabaseUrl::parse(
                &format!("postgres://u:s3cret@h/d?sslrootcert=system&sslmode={weak}"),
                "X",
            )
            .unwrap_err();
            assert!(
                e.contains(&format!(
                    "sslmode={weak} may not be used with sslrootcert=system"
                )),
                "{e}"
            );
            assert!(e.contains("verify-full") && !e.contains("s3cret"), "{e}");
        }
        // An empty path is no path (libpq's default file then).
        assert_eq!(tls_of("host=h sslrootcert=''").rootcert, None);
        for text in [
            "postgres://u:s3cret@h/d?sslmode=verify_full",
            "host=h password=s3cret sslmode=VERIFY-FULL",
        ] {
            let e = DatabaseUrl::parse(text, "X").unwrap_err();
            assert!(e.contains("`sslmode`") && e.contains("verify-full"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
            assert_eq!(redact(text), UNREADABLE);
        }
    }

    /// Only settings are taken out, read as tokio-postgres reads them: never a piece of a
    /// password or of another setting's value that looks like one.
    #[test]
    fn tls_settings_are_not_read_inside_other_values() {
        for (text, password) in [
            ("postgres://u:a&sslrootcert=x@h/d", Some("a&sslrootcert=x")),
            (
                "postgres://u:a?sslmode=verify-full@h/d",
                Some("a?sslmode=verify-full"),
            ),
            (
                "host=h password='sslkey=/x sslmode=verify-ca'",
                Some("sslkey=/x sslmode=verify-ca"),
            ),
            (r"host=h password=sslcert\ =/x", Some("sslcert =/x")),
            (
                "host=h application_name='sslmode=verify-full sslrootcert=/x'",
                None,
            ),
            ("postgres://h/d?application_name=sslrootcert%3D%2Fx", None),
        ] {
            let url = DatabaseUrl::parse(text, "X").unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(url.tls(), &TlsSettings::default(), "{text}");
            assert_eq!(url.for_driver(), text);
            let config: Config = url.for_driver().parse().unwrap();
            assert_eq!(config.get_password(), password.map(str::as_bytes), "{text}");
            if let Some(password) = password {
                assert!(!url.redacted().contains(password), "{url}");
            }
        }
        // A TLS setting before a syntax error: tokio-postgres still names the syntax error (at
        // the byte it is at), not the setting it does not know.
        let e = DatabaseUrl::parse("host=h sslrootcert=/ca.pem password='s3cret", "X").unwrap_err();
        assert!(e.contains("unterminated") && !e.contains("s3cret"), "{e}");
        let e = DatabaseUrl::parse("host=h sslcert=/cc.pem password=s3 cret x=y", "X").unwrap_err();
        let plain =
            DatabaseUrl::parse("host=h sslmode=require password=s3 cret x=y", "X").unwrap_err();
        assert!(e.contains("unexpected character at byte 40"), "{e}");
        assert!(plain.contains("unexpected character at byte 40"), "{plain}");
        // The password is hidden in messages about a URL with TLS settings too.
        assert_eq!(
            hide_password_in(
                "failed for s3cret",
                "postgres://u:s3cret@h/d?sslmode=verify-full&sslrootcert=/ca.pem"
            ),
            "failed for ***"
        );
    }
}
