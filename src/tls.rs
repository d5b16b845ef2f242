//! TLS, both ways: rustls with the ring provider (it cross-compiles to ARM without cmake).
//!
//! Outgoing, two client configurations: one that encrypts without checking who the server is
//! (what MTAs do by default: a certificate check on port 25 would stop mail to most of the
//! Internet), and one that checks the certificate against the web PKI roots.
//!
//! Incoming, the server's certificate and key from PEM files, TLS 1.2 and 1.3 only, re-read
//! when the files change (a certbot renewal needs no restart; sessions in progress keep the
//! configuration they started with). No TLS 1.3 session tickets on the smtp role: Microsoft's
//! servers abort STARTTLS when they get one and never fall back to plaintext.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::ServerSessionMemoryCache;
use rustls::{ServerConfig, ServerConnection};

use crate::config::{Role, TlsFiles};
use crate::stamp::Watch;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

/// `smtp_tls`: how outgoing connections use STARTTLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Never.
    None,
    /// Whenever offered, without checking the certificate; plaintext if not offered or if
    /// the handshake fails.
    May,
    /// Always, without checking the certificate; a server without STARTTLS is not used.
    Encrypt,
    /// Always, with the certificate checked against the web PKI roots and the MX name.
    Verify,
}

impl FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<TlsMode, String> {
        match s {
            "none" => Ok(TlsMode::None),
            "may" => Ok(TlsMode::May),
            "encrypt" => Ok(TlsMode::Encrypt),
            "verify" => Ok(TlsMode::Verify),
            _ => Err(format!("'{s}' is not none, may, encrypt or verify")),
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::None => "none",
            TlsMode::May => "may",
            TlsMode::Encrypt => "encrypt",
            TlsMode::Verify => "verify",
        })
    }
}

/// The client configurations, built once and shared by the delivery threads.
pub struct ClientTls {
    pub opportunistic: Arc<ClientConfig>,
    pub verified: Arc<ClientConfig>,
}

impl ClientTls {
    pub fn new() -> Result<ClientTls, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(AnyCertificate(provider.signature_verification_algorithms));
        let opportunistic = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let verified = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls {
            opportunistic: Arc::new(opportunistic),
            verified: Arc::new(verified),
        })
    }

    pub fn config(&self, mode: TlsMode) -> Arc<ClientConfig> {
        match mode {
            TlsMode::Verify => Arc::clone(&self.verified),
            _ => Arc::clone(&self.opportunistic),
        }
    }
}

/// The server side: a configuration per role, from files re-read when they change.
pub struct ServerTls {
    files: TlsFiles,
    submission_tickets: bool,
    loaded: Mutex<Loaded>,
}

struct Loaded {
    watch: Watch,
    smtp: Arc<ServerConfig>,
    submission: Arc<ServerConfig>,
}

impl ServerTls {
    /// Reads the certificate and key; an error (a missing file, a key that does not match)
    /// names the file.
    pub fn load(files: &TlsFiles, submission_tickets: bool) -> Result<ServerTls, String> {
        let watch = Watch::new(&[&files.cert, &files.key]);
        let (smtp, submission) = server_configs(files, submission_tickets)?;
        Ok(ServerTls {
            files: files.clone(),
            submission_tickets,
            loaded: Mutex::new(Loaded {
                watch,
                smtp,
                submission,
            }),
        })
    }

    /// A server connection for a new client of `role`, with the files as they are now. If
    /// they changed but cannot be used (a renewal half-written), the last good ones serve,
    /// with one log line per change.
    pub fn accept(&self, role: Role) -> Result<ServerConnection, String> {
        let config = {
            let Ok(mut loaded) = self.loaded.lock() else {
                return Err("TLS configuration unavailable".into());
            };
            if let Some(stamp) = loaded.watch.due() {
                match server_configs(&self.files, self.submission_tickets) {
                    Ok((smtp, submission)) => {
                        loaded.smtp = smtp;
                        loaded.submission = submission;
                        loaded.watch.read_well(stamp);
                        log::info!("TLS certificate re-read from {}", self.files.cert.display());
                    }
                    Err(e) => {
                        if loaded.watch.read_failed(stamp) {
                            log::error!("TLS certificate not re-read, the old one serves: {e}");
                        }
                    }
                }
            }
            match role {
                Role::Smtp => Arc::clone(&loaded.smtp),
                Role::Submission | Role::Submissions => Arc::clone(&loaded.submission),
            }
        };
        ServerConnection::new(config).map_err(|e| e.to_string())
    }
}

impl ServerTls {
    /// Reads the files now, settled or not (SIGHUP: the operator says they are ready); if
    /// they cannot be used, the last good ones go on serving.
    pub fn reload_now(&self) {
        let Ok(mut loaded) = self.loaded.lock() else {
            return;
        };
        let stamp = loaded.watch.current();
        match server_configs(&self.files, self.submission_tickets) {
            Ok((smtp, submission)) => {
                loaded.smtp = smtp;
                loaded.submission = submission;
                loaded.watch.read_well(stamp);
                log::info!(
                    "SIGHUP: TLS certificate re-read from {}",
                    self.files.cert.display()
                );
            }
            Err(e) => {
                loaded.watch.read_failed(stamp);
                log::error!("SIGHUP: TLS certificate not re-read, the old one serves: {e}");
            }
        }
    }
}

/// The smtp role's configuration (no session tickets) and the submission roles'.
fn server_configs(
    files: &TlsFiles,
    submission_tickets: bool,
) -> Result<(Arc<ServerConfig>, Arc<ServerConfig>), String> {
    let cert = &files.cert;
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut smtp = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("{} and {}: {e}", cert.display(), files.key.display()))?;
    let mut submission = smtp.clone();
    // Sessions of one role never resume on another.
    submission.session_storage = ServerSessionMemoryCache::new(256);
    smtp.send_tls13_tickets = 0;
    if !submission_tickets {
        submission.send_tls13_tickets = 0;
    }
    Ok((Arc::new(smtp), Arc::new(submission)))
}

/// What a finished handshake agreed on, for logs and `Received:` headers.
pub fn describe(connection: &ServerConnection) -> String {
    let version = match connection.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "TLS".to_string(),
    };
    match connection.negotiated_cipher_suite() {
        Some(suite) => format!("{version} with cipher {:?}", suite.suite()),
        None => version,
    }
}

/// Accepts any certificate, but still checks the handshake signatures: the connection is
/// encrypted against passive eavesdroppers, which is what opportunistic SMTP TLS promises.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
