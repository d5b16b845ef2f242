//! TLS servers and clients for tests: a server with an rcgen certificate for mx.test and a
//! users file, a rustls client that trusts only that certificate, and raw SMTP over it.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::{Server, TempDir, DEADLINE};

/// Writes a fresh self-signed certificate for `name` as `cert.pem` and `key.pem` in `dir`;
/// returns it (DER) for clients to trust.
pub fn write_certificate(dir: &Path, name: &str) -> CertificateDer<'static> {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    certified.cert.der().clone()
}

/// alice's password in `USERS`.
pub const PASSWORD: &str = "s3cret:pw";

/// The users file of the TLS servers: alice, password `s3cret:pw` (SHA-512-crypt, made with
/// `openssl passwd -6`: cheap to check in a debug build), who may also send as team@.
pub const USERS: &str = "alice:$6$postilionsalt$24w8x5mYEsSf1JjwN5VB4wcsAJ18.gf7O0Hl2CV0VVCgsl2HEBjlC0888ibr9eHe4kULQ21gjjJyxZJdNja371:team@example.test\n";

/// A server with a certificate for mx.test and the users above, listening as smtp
/// (`server.addr`), submissions and submission; returns the submissions address too.
pub fn tls_server(name: &str) -> (Server, SocketAddr, CertificateDer<'static>) {
    tls_server_with(name, &[])
}

/// `tls_server` plus `extra` flags. The certificate is `cert.pem` in `server.dir`.
pub fn tls_server_with(
    name: &str,
    extra: &[&str],
) -> (Server, SocketAddr, CertificateDer<'static>) {
    let dir = Arc::new(TempDir::new(name));
    let cert = write_certificate(&dir.0, "mx.test");
    let (cert_path, key_path) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let users = dir.0.join("users");
    fs::write(&users, USERS).unwrap();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0, submissions@127.0.0.1:0, submission@127.0.0.1:0",
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
        "--users-file",
        users.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let server = Server::start_in(&dir.0.clone(), &args, Some(dir));
    let submissions = listen_addr(&server, "submissions");
    (server, submissions, cert)
}

/// The address of the listener of `role` (submission or submissions), from the start-up log.
pub fn listen_addr(server: &Server, role: &str) -> SocketAddr {
    let line = server.wait_for_log(&format!("({role})"));
    line.split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap()
        .parse()
        .unwrap()
}

/// A TLS client that trusts only `cert`, for the name mx.test.
pub fn client_config(cert: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

pub type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Handshakes over `tcp` as a client trusting `cert`.
pub fn handshake(tcp: TcpStream, cert: &CertificateDer<'static>) -> std::io::Result<Tls> {
    let name = ServerName::try_from("mx.test").unwrap();
    let connection = ClientConnection::new(client_config(cert), name).unwrap();
    let mut tls = StreamOwned::new(connection, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Reads one whole reply (its lines joined with `\n`) from any stream.
pub fn reply(reader: &mut impl BufRead) -> String {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "closed after {lines:?}"
        );
        let done = line.as_bytes().get(3) == Some(&b' ');
        lines.push(line.trim_end().to_string());
        if done {
            return lines.join("\n");
        }
    }
}

/// Plaintext greeting, EHLO and STARTTLS on `addr`; the TLS stream after the handshake.
pub fn starttls(addr: SocketAddr, cert: &CertificateDer<'static>) -> BufReader<Tls> {
    BufReader::new(try_starttls(addr, cert).unwrap())
}

/// As `starttls`, with the handshake's error (a certificate `cert` does not match).
pub fn try_starttls(addr: SocketAddr, cert: &CertificateDer<'static>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut plain = BufReader::new(tcp.try_clone().unwrap());
    assert!(reply(&mut plain).starts_with("220 "));
    (&tcp).write_all(b"EHLO c.test\r\n").unwrap();
    assert!(reply(&mut plain).contains("250 STARTTLS"));
    (&tcp).write_all(b"STARTTLS\r\n").unwrap();
    assert!(reply(&mut plain).starts_with("220 2.0.0 Ready to start TLS"));
    handshake(tcp, cert)
}

/// Sends one command line over TLS and returns the reply.
pub fn command(tls: &mut BufReader<Tls>, line: &str) -> String {
    tls.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .unwrap();
    reply(tls)
}
