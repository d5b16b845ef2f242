//! TLS for outgoing SMTP: rustls with the ring provider (it cross-compiles to ARM without
//! cmake). Two client configurations: one that encrypts without checking who the server is
//! (what MTAs do by default: a certificate check on port 25 would stop mail to most of the
//! Internet), and one that checks the certificate against the web PKI roots.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

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
