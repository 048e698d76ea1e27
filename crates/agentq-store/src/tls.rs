//! TLS for PostgreSQL connections, with libpq's settings and meanings: `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey`, on rustls (its `ring` provider: no C toolchain beyond what `ring`
//! needs).
//!
//! tokio-postgres reads only `sslmode=disable|prefer|require` and leaves certificates to the TLS
//! connector; [`super::url`] takes the other settings out of the connection string (and maps
//! `verify-ca` and `verify-full` to `require`, so tokio-postgres asks the server for TLS and
//! refuses a server without it) and this module builds the connector that checks what libpq
//! would check:
//!
//! | `sslmode` | TLS | server's certificate |
//! | --- | --- | --- |
//! | `disable` | never | - |
//! | `allow`, `prefer` (the default) | if the server offers it | as `require` |
//! | `require` | always | not checked, unless a root certificate is given (`sslrootcert`, or the file `~/.postgresql/root.crt` exists): then as `verify-ca` |
//! | `verify-ca` | always | signed by a CA of `sslrootcert` (by default `~/.postgresql/root.crt`, which must then exist) |
//! | `verify-full` | always | as `verify-ca`, and made out to the host name connected to |
//!
//! `sslrootcert=system` trusts the system's CAs (as libpq 16 does) and, as there, asks for
//! `verify-full`: anyone can get a certificate from a public CA for a name of their own, so a
//! weaker mode is refused. A server certificate that is itself in `sslrootcert` (a self-signed
//! one, as PostgreSQL's documentation makes) is trusted as it stands. `allow` (plain first, in
//! libpq) is read as `prefer`. Host names are matched against the certificate's subjectAltName
//! entries (DNS names, or IP addresses for a host given as one); a certificate that names its
//! host only in the Common Name is refused under `verify-full` with a message that says so.
//!
//! A Unix socket never carries TLS (the server offers none there, and libpq asks for none): a
//! connection string whose every host is a socket connects without it whatever `sslmode` says.
//!
//! Every refusal says what was wrong and what to do ([`explain`]), never the password.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, OtherError,
    RootCertStore, SignatureScheme,
};
pub use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    /// Read as [`SslMode::Prefer`].
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub const NAMES: &'static str = "disable, allow, prefer, require, verify-ca or verify-full";

    pub fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: whether to ask for TLS, and whether to go on without it.
    pub fn for_driver(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Driver;
        match self {
            SslMode::Disable => Driver::Disable,
            SslMode::Allow | SslMode::Prefer => Driver::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Driver::Require,
        }
    }
}

/// `sslrootcert`: a PEM file of CA certificates, or the system's trusted CAs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    System,
    File(PathBuf),
}

/// The TLS settings of a connection string, those tokio-postgres does not read.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub rootcert: Option<RootCert>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    Nothing,
    /// Signed by a trusted CA (verify-ca).
    Chain,
    /// And made out to the host (verify-full).
    ChainAndName,
}

/// Where the trusted CAs came from, for messages.
#[derive(Clone, Debug)]
enum Source {
    File { path: PathBuf, default: bool },
    System,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File {
                path,
                default: false,
            } => write!(f, "sslrootcert {}", path.display()),
            Source::File {
                path,
                default: true,
            } => write!(
                f,
                "{} (the default sslrootcert, as in libpq)",
                path.display()
            ),
            Source::System => f.write_str("the system's trusted CAs (sslrootcert=system)"),
        }
    }
}

/// The trusted CAs.
#[derive(Debug)]
struct Roots {
    store: RootCertStore,
    /// The certificates themselves, for a server certificate that is one of them.
    certs: Vec<CertificateDer<'static>>,
    source: Source,
}

/// libpq's files in `~/.postgresql/`, used when the connection string names none.
fn default_file(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".postgresql").join(name))
}

/// The connector for `settings`: it reads the certificate files now, once (the store's pool
/// keeps its connector for the life of the process, so a replaced file is read at the next
/// start; the listener's and the host id's connections make one at each connect).
pub fn connector(settings: &TlsSettings) -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (check, roots) = match settings.mode {
        // Never used: tokio-postgres is told not to ask for TLS.
        SslMode::Disable => (Check::Nothing, None),
        mode => {
            let roots = roots(settings)?;
            let check = match (mode, &roots) {
                (SslMode::VerifyFull, _) => Check::ChainAndName,
                (SslMode::VerifyCa, _) | (_, Some(_)) => Check::Chain,
                _ => Check::Nothing,
            };
            (check, roots)
        }
    };
    let verifier = Verifier {
        check,
        mode: settings.mode,
        roots,
        algorithms: provider.signature_verification_algorithms,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("setting up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match identity(settings)? {
        None => builder.with_no_client_auth(),
        Some((cert, key, chain, secret)) => {
            builder.with_client_auth_cert(chain, secret).map_err(|e| {
                format!(
                    "the client certificate sslcert {} and its key sslkey {} cannot be used together: {e}",
                    cert.display(),
                    key.display()
                )
            })?
        }
    };
    // As libpq 17 does; a server before 17 ignores it, 17 requires it for direct TLS.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(MakeRustlsConnect::new(config))
}

/// The trusted CAs `settings` name, if any: `sslrootcert`, or `~/.postgresql/root.crt` when it
/// exists. `verify-ca` and `verify-full` need some.
fn roots(settings: &TlsSettings) -> Result<Option<Roots>, String> {
    let verify = matches!(settings.mode, SslMode::VerifyCa | SslMode::VerifyFull);
    let (path, default) = match &settings.rootcert {
        Some(RootCert::System) => return system_roots().map(Some),
        Some(RootCert::File(path)) => (path.clone(), false),
        None => match default_file("root.crt") {
            Some(path) if path.exists() => (path, true),
            missing => {
                if !verify {
                    return Ok(None);
                }
                let default = match missing {
                    Some(path) => format!(
                        "; by default it is read from {}, which does not exist",
                        path.display()
                    ),
                    None => String::new(),
                };
                return Err(format!(
                    "sslmode={} checks the server's certificate against a CA certificate, and none is given: set sslrootcert to the PEM file of the CA that signed the server's certificate (a managed database's provider publishes it), or sslrootcert=system to trust the system's CAs{default}",
                    settings.mode.name()
                ));
            }
        },
    };
    let certs = read_certs(&path, "sslrootcert")?;
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(certs.iter().cloned());
    if added == 0 {
        return Err(format!(
            "sslrootcert {} holds no CA certificate rustls can use",
            path.display()
        ));
    }
    Ok(Some(Roots {
        store,
        certs,
        source: Source::File { path, default },
    }))
}

fn system_roots() -> Result<Roots, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs.iter().cloned());
    if added == 0 {
        let why = match found.errors.first() {
            Some(e) => format!(" ({e})"),
            None => String::new(),
        };
        return Err(format!(
            "sslrootcert=system: no trusted CA certificates were found on this system{why}: install them (Debian: apt-get install ca-certificates), or set sslrootcert to the PEM file of the CA that signed the server's certificate"
        ));
    }
    Ok(Roots {
        store,
        certs: Vec::new(),
        source: Source::System,
    })
}

/// The certificates of the PEM file at `path` (`what` names the setting, for messages).
fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{what} {shown}: {}", pem_error(&e)))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {shown} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certs)
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(e) if e.kind() == io::ErrorKind::NotFound => "no such file".into(),
        Error::Io(e) => format!("cannot be read: {e}"),
        other => format!("not a PEM file: {other}"),
    }
}

/// A client certificate, its chain and key: `sslcert` and `sslkey`, or libpq's
/// `~/.postgresql/postgresql.crt` and `.key` when the first exists.
type Identity = (
    PathBuf,
    PathBuf,
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
);

fn identity(settings: &TlsSettings) -> Result<Option<Identity>, String> {
    if settings.mode == SslMode::Disable {
        return Ok(None);
    }
    let cert = match &settings.cert {
        Some(path) => path.clone(),
        None => match default_file("postgresql.crt") {
            Some(path) if path.exists() => path,
            _ => {
                if let Some(key) = &settings.key {
                    return Err(format!(
                        "sslkey {} is given but no sslcert: set sslcert to the client certificate that goes with the key",
                        key.display()
                    ));
                }
                return Ok(None);
            }
        },
    };
    let key = match &settings.key {
        Some(path) => path.clone(),
        None => default_file("postgresql.key").ok_or_else(|| {
            format!(
                "sslcert {} needs its key: set sslkey to its PEM file",
                cert.display()
            )
        })?,
    };
    let chain = read_certs(&cert, "sslcert")?;
    let secret = PrivateKeyDer::from_pem_file(&key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "sslkey {} holds no private key (expected PEM: PKCS#8, RSA or EC; an encrypted key is not supported)",
            key.display()
        ),
        e => format!(
            "sslkey {} (the key of sslcert {}): {}",
            key.display(),
            cert.display(),
            pem_error(&e)
        ),
    })?;
    Ok(Some((cert, key, chain, secret)))
}

/// Checks the server's certificate as `sslmode` says.
#[derive(Debug)]
struct Verifier {
    check: Check,
    mode: SslMode,
    roots: Option<Roots>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// Why a server's certificate was refused, in words: carried through rustls and tokio-postgres
/// to [`explain`].
#[derive(Debug)]
struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refused(why: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refused(why)))))
}

impl Verifier {
    /// What to say of a certificate that does not chain to the trusted CAs.
    fn chain_error(&self, roots: &Roots, e: &rustls::Error) -> String {
        let source = &roots.source;
        let mode = match self.mode {
            SslMode::VerifyFull | SslMode::VerifyCa => format!("sslmode={}", self.mode.name()),
            other => format!(
                "sslmode={} checks it when a root certificate is given, as libpq does",
                other.name()
            ),
        };
        match e {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                let (signer, fix) = match source {
                    Source::System => (
                        "any CA the system trusts (sslrootcert=system)".to_string(),
                        "set sslrootcert to the PEM file of the CA that signed it (a managed database's provider publishes it)",
                    ),
                    Source::File { .. } => (
                        format!("a CA of {source}"),
                        "set sslrootcert to the PEM file of the CA that signed it (a managed database's provider publishes it; `openssl s_client -starttls postgres -connect HOST:PORT -showcerts` shows the chain the server sends)",
                    ),
                };
                format!(
                    "the server's certificate is not trusted: it is not signed by {signer} ({mode}): {fix}"
                )
            }
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => format!(
                "the server's certificate (or one of its chain) has expired{}: the server needs a renewed certificate (or check this machine's clock)",
                when(e)
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
            ) => format!(
                "the server's certificate (or one of its chain) is not valid yet{}: check this machine's clock",
                when(e)
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
            ) => "the server's certificate is not made out for a TLS server (its extendedKeyUsage lacks serverAuth): the server needs a server certificate".to_string(),
            // webpki's word for a CA certificate where a server's should be.
            e if format!("{e:?}").contains("CaUsedAsEndEntity") => format!(
                "the server's certificate is a CA certificate (self-signed?) that is not in {source} ({mode}): set sslrootcert to a file holding that very certificate, or the CA's that signed it"
            ),
            e => format!(
                "the server's certificate could not be verified against {source} ({mode}): {e}"
            ),
        }
    }
}

/// ` (valid until DATE)` or ` (valid from DATE)`, for an error about dates that carries one.
fn when(e: &rustls::Error) -> String {
    let (word, at) = match e {
        rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
            not_after, ..
        }) => ("until", not_after),
        rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext {
            not_before,
            ..
        }) => ("from", not_before),
        _ => return String::new(),
    };
    chrono::DateTime::from_timestamp(at.as_secs() as i64, 0)
        .map(|t| format!(" (valid {word} {})", t.format("%Y-%m-%d %H:%M:%S UTC")))
        .unwrap_or_default()
}

/// What to say of a certificate made out to other names than `host`.
fn name_error(e: &rustls::Error, host: &ServerName<'_>) -> String {
    let host = host.to_str();
    let presented = match e {
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            presented,
            ..
        }) => presented.as_slice(),
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => &[],
        other => {
            return format!(
                "the server's certificate cannot be checked for the host name {host}: {other}"
            );
        }
    };
    // webpki lists them as `DnsName("db.example")` and `IpAddress(10.0.0.1)`, with the
    // subjectAltName entries that are no host (URIs, directory names).
    let names: Vec<&str> = presented
        .iter()
        .filter_map(|n| {
            let inner = n
                .strip_prefix("DnsName(")
                .or_else(|| n.strip_prefix("IpAddress("))?;
            Some(inner.strip_suffix(')')?.trim_matches('"'))
        })
        .collect();
    if names.is_empty() {
        return format!(
            "hostname mismatch: the server's certificate names no host in its subjectAltName (a name only in its Common Name is not read), so it cannot be checked for {host} (sslmode=verify-full): have it reissued with subjectAltName DNS:{host} (or IP:{host} for an address), or use sslmode=verify-ca to check only that a trusted CA signed it"
        );
    }
    format!(
        "hostname mismatch: the server's certificate is for {}, not {host} (sslmode=verify-full checks the name connected to): connect to a name the certificate holds (host=..., with hostaddr=... for the address), or have it reissued to include {host}, or use sslmode=verify-ca to check only that a trusted CA signed it",
        names.join(", ")
    )
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let roots = match (self.check, &self.roots) {
            (Check::Nothing, _) | (_, None) => return Ok(ServerCertVerified::assertion()),
            (_, Some(roots)) => roots,
        };
        let cert = ParsedCertificate::try_from(end_entity)
            .map_err(|e| refused(format!("the server's certificate cannot be read: {e}")))?;
        if let Err(e) = verify_server_cert_signed_by_trust_anchor(
            &cert,
            &roots.store,
            intermediates,
            now,
            self.algorithms.all,
        ) {
            // A certificate that is itself trusted (self-signed, given as the root) is, as
            // OpenSSL has it for libpq: pinned, its dates are not checked.
            if !roots
                .certs
                .iter()
                .any(|c| c.as_ref() == end_entity.as_ref())
            {
                return Err(refused(self.chain_error(roots, &e)));
            }
        }
        if self.check == Check::ChainAndName {
            verify_server_name(&cert, server_name)
                .map_err(|e| refused(name_error(&e, server_name)))?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What tokio-postgres says when the server answers the request for TLS with no.
const NO_TLS: &str = "server does not support TLS";

/// A TLS failure of `e` in words, with what to do; `None` if `e` is not about TLS.
pub fn explain(e: &tokio_postgres::Error) -> Option<String> {
    let shown = e.to_string();
    // tokio-postgres's own words for its kind of error (`Kind::Tls`), then its cause.
    let cause = shown.strip_prefix("error performing TLS handshake")?;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.to_string() == NO_TLS {
            return Some(
                "the server does not support TLS (it answered the request for TLS with no: its ssl setting is off), but sslmode asks for TLS (require, verify-ca or verify-full): turn TLS on in the server's configuration (ssl = on, with ssl_cert_file and ssl_key_file), or set sslmode=prefer or disable if an unencrypted connection is acceptable here".into(),
            );
        }
        if let Some(rustls) = s
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(explain_rustls(rustls));
        }
        if let Some(io) = s.downcast_ref::<io::Error>()
            && io.get_ref().is_none()
        {
            return Some(format!(
                "the TLS handshake failed: {io} (the server closed the connection: is it a PostgreSQL server, and does it accept TLS 1.2 or 1.3?)"
            ));
        }
        source = s.source();
    }
    Some(format!("the TLS handshake failed{cause}"))
}

fn explain_rustls(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(why)))
            if why.downcast_ref::<Refused>().is_some() =>
        {
            why.to_string()
        }
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => "the server requires a client certificate: set sslcert and sslkey to the PEM files of a certificate signed by a CA of the server's ssl_ca_file".into(),
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied => format!(
                "the server refused this client's certificate (TLS alert {alert:?}): sslcert must be signed by a CA of the server's ssl_ca_file, and be current"
            ),
            AlertDescription::ProtocolVersion => "the server and agentq have no TLS version in common: agentq speaks TLS 1.2 and 1.3; see the server's ssl_min_protocol_version and ssl_max_protocol_version".into(),
            AlertDescription::HandshakeFailure | AlertDescription::InsufficientSecurity => format!(
                "the server ended the TLS handshake (alert {alert:?}): no cipher suite or key exchange in common? agentq offers TLS 1.3 and TLS 1.2 ECDHE suites with AES-GCM or ChaCha20-Poly1305; see the server's ssl_ciphers"
            ),
            other => format!("the server ended the TLS handshake (TLS alert {other:?})"),
        },
        rustls::Error::PeerIncompatible(why) => format!(
            "the server's TLS is not compatible with agentq's ({why:?}): agentq speaks TLS 1.2 (ECDHE suites) and 1.3"
        ),
        rustls::Error::InvalidCertificate(other) => {
            format!("the server's certificate is not valid: {other}")
        }
        other => format!("the TLS handshake failed: {other}"),
    }
}

/// The trusted CAs `settings` name, in words: `sslrootcert`, or libpq's default file if it
/// exists.
fn root_in_use(settings: &TlsSettings) -> Option<String> {
    match &settings.rootcert {
        Some(RootCert::System) => Some("the system's CAs".to_string()),
        Some(RootCert::File(path)) => Some(path.display().to_string()),
        None => default_file("root.crt")
            .filter(|p| p.exists())
            .map(|p| p.display().to_string()),
    }
}

/// Whether a TLS connection under `settings` checks the server's certificate.
pub fn checks_certificate(settings: &TlsSettings) -> bool {
    match settings.mode {
        SslMode::Disable => false,
        SslMode::VerifyCa | SslMode::VerifyFull => true,
        _ => root_in_use(settings).is_some(),
    }
}

/// How the server's certificate is checked under `settings`, for `agentq doctor`.
pub fn verification(settings: &TlsSettings) -> String {
    let mode = settings.mode.name();
    match (settings.mode, root_in_use(settings)) {
        (SslMode::VerifyFull, Some(root)) => {
            format!("certificate and host name verified against {root} (sslmode={mode})")
        }
        (SslMode::VerifyFull | SslMode::VerifyCa, None) => format!("sslmode={mode}"),
        (_, Some(root)) => {
            format!("certificate verified against {root}, host name not checked (sslmode={mode})")
        }
        (_, None) => format!(
            "the server's certificate is not verified (sslmode={mode}): anyone between here and the server could stand in for it"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_map_to_what_tokio_postgres_reads() {
        use tokio_postgres::config::SslMode as Driver;
        for (name, driver) in [
            ("disable", Driver::Disable),
            ("allow", Driver::Prefer),
            ("prefer", Driver::Prefer),
            ("require", Driver::Require),
            ("verify-ca", Driver::Require),
            ("verify-full", Driver::Require),
        ] {
            let mode = SslMode::parse(name).unwrap();
            assert_eq!(mode.name(), name);
            assert_eq!(mode.for_driver(), driver);
        }
        assert_eq!(SslMode::parse("VERIFY-FULL"), None);
    }

    #[test]
    fn missing_or_unreadable_files_are_named_with_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        let none = d.path().join("none.pem");
        let settings = |mode, rootcert: Option<RootCert>| TlsSettings {
            mode,
            rootcert,
            ..Default::default()
        };
        let e = connector(&settings(
            SslMode::VerifyFull,
            Some(RootCert::File(none.clone())),
        ))
        .err()
        .unwrap();
        assert!(
            e.contains("sslrootcert") && e.contains("no such file"),
            "{e}"
        );
        assert!(e.contains(&none.display().to_string()), "{e}");
        std::fs::write(&none, "not a certificate").unwrap();
        let e = connector(&settings(
            SslMode::VerifyCa,
            Some(RootCert::File(none.clone())),
        ))
        .err()
        .unwrap();
        assert!(e.contains("holds no certificate"), "{e}");
        // No root certificate for verify-*: libpq's default file, and what to set.
        let e = connector(&settings(SslMode::VerifyCa, None)).err();
        if let Some(e) = e {
            assert!(e.contains("set sslrootcert"), "{e}");
        }
        // Disable and require without a root certificate read nothing.
        connector(&settings(
            SslMode::Disable,
            Some(RootCert::File(d.path().join("x"))),
        ))
        .unwrap();
        let key = TlsSettings {
            key: Some(d.path().join("k.pem")),
            cert: Some(d.path().join("c.pem")),
            ..settings(SslMode::Require, None)
        };
        let e = connector(&key).err().unwrap();
        assert!(e.contains("sslcert") && e.contains("c.pem"), "{e}");
    }

    /// The verifier on the test server's certificates (scripts/test makes them): a certificate
    /// that is itself in sslrootcert is trusted (a self-signed server certificate, as
    /// PostgreSQL's documentation makes, is a CA certificate, which webpki refuses as a
    /// server's), and one naming no host is refused under verify-full with the reason.
    #[test]
    fn a_certificate_given_as_the_root_is_trusted_as_it_stands() {
        let Some(dir) = std::env::var_os("AGENTQ_TEST_PG_TLS") else {
            assert_eq!(
                std::env::var("AGENTQ_TEST_PG").as_deref(),
                Ok("skip"),
                "AGENTQ_TEST_PG_TLS is not set: run scripts/test, or set AGENTQ_TEST_PG=skip"
            );
            eprintln!("skipped: AGENTQ_TEST_PG_TLS is not set and AGENTQ_TEST_PG=skip");
            return;
        };
        let dir = PathBuf::from(dir);
        let ca = read_certs(&dir.join("ca.crt"), "test").unwrap().remove(0);
        let other = read_certs(&dir.join("other-ca.crt"), "test")
            .unwrap()
            .remove(0);
        let verifier = |mode| {
            let settings = TlsSettings {
                mode,
                rootcert: Some(RootCert::File(dir.join("ca.crt"))),
                ..Default::default()
            };
            Verifier {
                check: match mode {
                    SslMode::VerifyFull => Check::ChainAndName,
                    _ => Check::Chain,
                },
                mode,
                roots: roots(&settings).unwrap(),
                algorithms: rustls::crypto::ring::default_provider()
                    .signature_verification_algorithms,
            }
        };
        let name = ServerName::try_from("db.example").unwrap();
        let verify = |v: &Verifier, cert: &CertificateDer<'_>| {
            v.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
                .map(|_| ())
                .map_err(|e| explain_rustls(&e))
        };
        verify(&verifier(SslMode::VerifyCa), &ca).unwrap();
        let e = verify(&verifier(SslMode::VerifyFull), &ca).unwrap_err();
        assert!(e.contains("names no host in its subjectAltName"), "{e}");
        assert!(e.contains("subjectAltName DNS:db.example"), "{e}");
        let e = verify(&verifier(SslMode::Require), &other).unwrap_err();
        assert!(
            e.contains("is a CA certificate (self-signed?) that is not in sslrootcert"),
            "{e}"
        );
        assert!(
            e.contains("sslmode=require checks it when a root certificate is given"),
            "{e}"
        );
    }
}
