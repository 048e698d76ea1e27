//! A PostgreSQL connection string that keeps its password to itself.
//!
//! [`DatabaseUrl`] holds the string as the user wrote it (`postgres://user:secret@host/db` or the
//! `host=... password=...` key=value form) and shows only [`redact`]ed forms: its `Debug` and
//! `Display` both hide the password, so no log line, error, `doctor` check or `status` line can
//! print it by accident. Only the store reads the real string, through [`DatabaseUrl::expose`].

use std::fmt;

/// What stands where a password was.
const HIDDEN: &str = "***";

/// A connection string whose password never reaches a log or a message.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    secret: String,
    /// Where it came from, for messages: `[store] url` or `AGENTQ_DATABASE_URL`.
    pub origin: &'static str,
}

impl DatabaseUrl {
    /// Checks that `text` is a PostgreSQL connection string (a URL or key=value pairs) that
    /// tokio-postgres can use. The error names what is wrong without quoting the password.
    pub fn parse(text: &str, origin: &'static str) -> Result<DatabaseUrl, String> {
        let text = text.trim();
        let is_url = text.starts_with("postgres://") || text.starts_with("postgresql://");
        if !is_url && !text.contains('=') {
            return Err(format!(
                "{origin} must be a PostgreSQL connection string, \"postgres://user:password@host:5432/dbname\" or \"host=... dbname=...\"; got {:?}",
                redact(text)
            ));
        }
        if let Err(e) = text.parse::<tokio_postgres::Config>() {
            let why = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string());
            return Err(format!(
                "{origin} {:?} is not a valid PostgreSQL connection string: {}",
                redact(text),
                hide_password_in(&why, text)
            ));
        }
        Ok(DatabaseUrl {
            secret: text.to_string(),
            origin,
        })
    }

    /// The connection string as written, password and all: for connecting, never for printing.
    pub fn expose(&self) -> &str {
        &self.secret
    }

    /// The connection string with its password hidden.
    pub fn redacted(&self) -> String {
        redact(&self.secret)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({:?})", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Hides the password of a connection string, in either of its forms: the user-info of a URL
/// (`postgres://user:secret@host` becomes `postgres://user:***@host`), a `password=` query
/// parameter, and a `password=` pair of the key=value form (quoted or not). Anything else is kept,
/// so the result still says which server and database are meant.
pub fn redact(text: &str) -> String {
    if let Some(scheme_end) = text.find("://") {
        redact_url(text, scheme_end + 3)
    } else {
        redact_pairs(text)
    }
}

fn redact_url(text: &str, rest_at: usize) -> String {
    let (head, rest) = text.split_at(rest_at);
    // The authority ends at the first '/', '?' or '#'; its user-info at the last '@' within it.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.find(':') {
                Some(colon) => format!("{}:{HIDDEN}{host}", &userinfo[..colon]),
                None => authority.to_string(),
            }
        }
        None => authority.to_string(),
    };
    let tail = match tail.find('?') {
        Some(q) => {
            let (path, query) = tail.split_at(q + 1);
            let (query, fragment) = match query.find('#') {
                Some(h) => query.split_at(h),
                None => (query, ""),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}={HIDDEN}")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}{}{fragment}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{head}{authority}{tail}")
}

/// The key=value form: `key = value` pairs separated by spaces, a value optionally in single
/// quotes with `\'` and `\\` escapes (libpq's rules).
fn redact_pairs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            out.push(c);
            chars.next();
            continue;
        }
        // The key, up to '=' or a space.
        let mut key_end = start;
        while let Some(&(i, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key_end = i + c.len_utf8();
            chars.next();
        }
        let key = &text[start..key_end];
        out.push_str(key);
        // Spaces and the '='.
        while let Some(&(_, c)) = chars.peek() {
            if c.is_whitespace() || c == '=' {
                out.push(c);
                chars.next();
                if c == '=' {
                    break;
                }
            } else {
                break;
            }
        }
        while let Some(&(_, c)) = chars.peek() {
            if c.is_whitespace() {
                out.push(c);
                chars.next();
            } else {
                break;
            }
        }
        // The value: quoted (with escapes) or up to the next space.
        let mut value = String::new();
        let quoted = matches!(chars.peek(), Some(&(_, '\'')));
        if quoted {
            chars.next();
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push('\\');
                            value.push(escaped);
                        }
                    }
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        let shown = if key.eq_ignore_ascii_case("password") {
            HIDDEN.to_string()
        } else {
            value
        };
        if quoted {
            out.push('\'');
            out.push_str(&shown);
            out.push('\'');
        } else {
            out.push_str(&shown);
        }
    }
    out
}

/// Replaces the password of `url`, if it appears in `message`, by `***`.
pub fn hide_password_in(message: &str, url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
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

    #[test]
    fn urls_keep_all_but_the_password() {
        for (given, shown) in [
            (
                "postgres://agentq:s3cret@db.example:5432/queue",
                "postgres://agentq:***@db.example:5432/queue",
            ),
            (
                "postgresql://agentq:p%40ss@db/queue?sslmode=disable",
                "postgresql://agentq:***@db/queue?sslmode=disable",
            ),
            // An '@' in the password itself: the host is after the last one.
            ("postgres://u:a@b@host/db", "postgres://u:***@host/db"),
            ("postgres://u@host/db", "postgres://u@host/db"),
            ("postgres://host/db", "postgres://host/db"),
            (
                "postgres://u@host/db?user=x&password=hunter2&application_name=a",
                "postgres://u@host/db?user=x&password=***&application_name=a",
            ),
            (
                "postgres://u:pw@h1:5432,h2:5433/db",
                "postgres://u:***@h1:5432,h2:5433/db",
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
                "host=db password = '***' dbname=q",
            ),
            ("PASSWORD=x host=h", "PASSWORD=*** host=h"),
            ("host=h user=u", "host=h user=u"),
        ] {
            assert_eq!(redact(given), shown, "{given}");
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
        assert!(!e.contains("s3cret"), "{e}");
        let e = DatabaseUrl::parse("host=h password=s3cret sslmode=sometimes", "X").unwrap_err();
        assert!(e.contains("sslmode"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        assert_eq!(
            hide_password_in("failed for s3cret", "postgres://u:s3cret@h/d"),
            "failed for ***"
        );
    }
}
