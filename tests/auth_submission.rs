//! AUTH and the submission roles with real clients and real handshakes: lettre over STARTTLS
//! (port 587's role) and implicit TLS (465's), Python's smtplib with `starttls()` and
//! `login()`, the refusals before TLS and before AUTH, wrong passwords and their throttling,
//! relaying, `sender_login_match`, and what an authenticated message leaves in the spool and
//! the log: the login, never the password or its hash.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{SmtpTransport, Transport};
use rustls::pki_types::CertificateDer;

use common::tls::{listen_addr, tls_server, tls_server_with, PASSWORD, USERS};
use common::{split_received, wait_until, Server, DEADLINE};

/// Waits until `n` log lines contain all of `parts` (the log is read as it comes), then
/// checks that there are no more.
fn assert_log_count(server: &Server, parts: &[&str], n: usize) {
    wait_until(&format!("{n} log lines with {parts:?}"), || {
        server.log_lines_with(parts).len() >= n
    });
    assert_eq!(server.log_lines_with(parts).len(), n, "{parts:?}");
}

/// How lettre reaches the server.
#[derive(Clone, Copy)]
enum Via {
    /// STARTTLS, required (lettre gives up if it is not offered).
    Starttls,
    /// Implicit TLS from the first byte (RFC 8314).
    Implicit,
}

/// lettre's TLS (rustls, ring) trusting the test certificate alone, added as a root (no
/// system or webpki roots), with the name mx.test checked: nothing is "accepted invalid".
fn tls_parameters(cert: &CertificateDer<'static>) -> TlsParameters {
    TlsParameters::builder("mx.test".into())
        .certificate_store(CertificateStore::None)
        .add_root_certificate(Certificate::from_der(cert.to_vec()).unwrap())
        .build_rustls()
        .unwrap()
}

/// lettre logging in as alice with `password` and only `mechanism`.
fn lettre(
    port: u16,
    cert: &CertificateDer<'static>,
    via: Via,
    mechanism: Mechanism,
    password: &str,
) -> SmtpTransport {
    let tls = tls_parameters(cert);
    SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(DEADLINE))
        .hello_name(ClientId::Domain("laptop.test".into()))
        .tls(match via {
            Via::Starttls => Tls::Required(tls),
            Via::Implicit => Tls::Wrapper(tls),
        })
        .credentials(Credentials::new("alice".into(), password.into()))
        .authentication(vec![mechanism])
        .build()
}

/// Sends a message from alice@example.test to bob@remote.test (not a local domain) with
/// `mailer`; the queue id, or lettre's error.
fn send_to_remote(mailer: &SmtpTransport) -> Result<String, lettre::transport::smtp::Error> {
    let envelope = Envelope::new(
        Some("alice@example.test".parse().unwrap()),
        vec!["bob@remote.test".parse().unwrap()],
    )
    .unwrap();
    let message =
        b"From: alice@example.test\r\nTo: bob@remote.test\r\nSubject: hi\r\n\r\nhello\r\n";
    let response = mailer.send_raw(&envelope, message)?;
    let first = response.first_line().unwrap().to_string();
    assert!(first.starts_with("2.0.0 Ok: queued as "), "{first}");
    Ok(first.rsplit(' ').next().unwrap().to_string())
}

/// The queued envelope of `id` is alice's message to bob@remote.test, sent with TLS and AUTH.
fn assert_relayed_for_alice(server: &Server, id: &str) {
    let env = server.queued_envelope(id);
    assert!(env.contains("From: <alice@example.test>\n"), "{env}");
    assert!(
        env.contains("Rcpt: <bob@remote.test>\nStatus: pending\n"),
        "{env}"
    );
    assert!(env.contains("Auth: alice\n"), "{env}");
    assert!(env.contains("Protocol: ESMTPSA\n"), "{env}");
}

#[test]
fn lettre_starttls_on_submission_logs_in_with_plain_and_with_login_and_relays() {
    let (server, _, cert) = tls_server("lettre-submission");
    let port = listen_addr(&server, "submission").port();
    for mechanism in [Mechanism::Plain, Mechanism::Login] {
        let mailer = lettre(port, &cert, Via::Starttls, mechanism, PASSWORD);
        let id = send_to_remote(&mailer).unwrap_or_else(|e| panic!("{mechanism:?}: {e}"));
        assert_relayed_for_alice(&server, &id);
    }
    assert_eq!(server.queue_files(".msg").len(), 2);
    // One login per mechanism, each on the submission role.
    assert_log_count(&server, &["authenticated as alice"], 2);
    assert_log_count(&server, &["connect from", "(submission)"], 2);
    // A wrong password, with each mechanism: 535, nothing queued.
    for mechanism in [Mechanism::Plain, Mechanism::Login] {
        let mailer = lettre(port, &cert, Via::Starttls, mechanism, "wrong");
        let error = send_to_remote(&mailer).unwrap_err();
        assert_eq!(
            error.status().map(|c| c.to_string()),
            Some("535".into()),
            "{mechanism:?}: {error}"
        );
    }
    assert_eq!(server.queue_files(".msg").len(), 2);
    // The refusals show the mechanism each used: PLAIN's credentials come with the command
    // (masked in the log), LOGIN's password answers a 334.
    assert_log_count(&server, &["reject: AUTH PLAIN ********: 535 5.7.8"], 1);
    assert_log_count(&server, &["reject: (AUTH response): 535 5.7.8"], 1);
}

#[test]
fn lettre_implicit_tls_on_submissions_logs_in_and_relays() {
    let (server, submissions, cert) = tls_server("lettre-submissions");
    let mailer = lettre(
        submissions.port(),
        &cert,
        Via::Implicit,
        Mechanism::Plain,
        PASSWORD,
    );
    let id = send_to_remote(&mailer).unwrap();
    assert_relayed_for_alice(&server, &id);
    server.wait_for_log("authenticated as alice");
    // Without credentials lettre goes straight to MAIL: 530, nothing queued.
    let anonymous = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(submissions.port())
        .timeout(Some(DEADLINE))
        .tls(Tls::Wrapper(tls_parameters(&cert)))
        .build();
    let error = send_to_remote(&anonymous).unwrap_err();
    assert_eq!(
        error.status().map(|c| c.to_string()),
        Some("530".into()),
        "{error}"
    );
    // The certificate is really checked: trusting another one for mx.test, lettre refuses.
    let other = rcgen::generate_simple_self_signed(vec!["mx.test".into()]).unwrap();
    let mailer = lettre(
        submissions.port(),
        other.cert.der(),
        Via::Implicit,
        Mechanism::Plain,
        PASSWORD,
    );
    let error = send_to_remote(&mailer).unwrap_err();
    assert!(
        error.to_string().contains("invalid peer certificate"),
        "{error}"
    );
    assert_eq!(server.queue_files(".msg").len(), 1);
}

/// What every smtplib script starts with: the ports (smtp, submission, submissions), a TLS
/// context that trusts only the test certificate (the chain is checked; the name is not, as
/// smtplib would check it against 127.0.0.1), and helpers.
const PRELUDE: &str = r#"
import base64, smtplib, ssl, sys, time
from concurrent.futures import ThreadPoolExecutor
SMTP_PORT, SUBMISSION, SUBMISSIONS = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.create_default_context(cafile=sys.argv[4])
ctx.check_hostname = False

def b64(data):
    return base64.b64encode(data.encode()).decode()

def plain(password, user='alice'):
    return 'PLAIN ' + b64('\0' + user + '\0' + password)

def expect(got, code, text=''):
    assert got[0] == code and got[1].decode().startswith(text), got
    return got

def submission():
    s = smtplib.SMTP('127.0.0.1', SUBMISSION, timeout=20)
    s.ehlo('laptop.test')
    s.starttls(context=ctx)
    s.ehlo('laptop.test')
    return s

def submissions(source='127.0.0.1'):
    s = smtplib.SMTP_SSL('127.0.0.1', SUBMISSIONS, context=ctx, timeout=20, source_address=(source, 0))
    s.ehlo('laptop.test')
    return s

MESSAGE = 'From: alice@example.test\r\nTo: bob@remote.test\r\nSubject: hi\r\n\r\nhello\r\n'
"#;

/// Runs `script` after `PRELUDE` against `server`; returns what it printed. Panics with its
/// output unless it succeeds.
fn smtplib(server: &Server, script: &str) -> String {
    let submission = listen_addr(server, "submission").port();
    let submissions = listen_addr(server, "submissions").port();
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!("{PRELUDE}\n{script}"))
        .arg(server.addr.port().to_string())
        .arg(submission.to_string())
        .arg(submissions.to_string())
        .arg(server.dir.join("cert.pem"))
        .output()
        .expect("python3 (make deps installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn smtplib_starttls_and_login_on_submission_relays_to_a_remote_domain() {
    let (server, _, _) = tls_server("smtplib-login");
    smtplib(
        &server,
        r#"
s = submission()
assert s.esmtp_features['auth'].split() == ['PLAIN', 'LOGIN'], s.esmtp_features
s.login('alice', 's3cret:pw')
assert s.sendmail('alice@example.test', ['bob@remote.test'], MESSAGE) == {}
s.quit()
"#,
    );
    let envelopes = server.queue_files(".msg");
    assert_eq!(envelopes.len(), 1);
    assert_relayed_for_alice(&server, envelopes[0].trim_end_matches(".msg"));
}

#[test]
fn submission_refuses_auth_and_mail_before_starttls_and_mail_before_auth() {
    let (server, _, _) = tls_server("submission-order");
    smtplib(
        &server,
        r#"
s = smtplib.SMTP('127.0.0.1', SUBMISSION, timeout=20)
s.ehlo('laptop.test')
assert s.has_extn('starttls') and not s.has_extn('auth'), s.esmtp_features
# The right password before TLS is not even looked at.
expect(s.docmd('AUTH', plain('s3cret:pw')), 530, '5.7.0 Must issue a STARTTLS command first')
expect(s.mail('alice@example.test'), 530, '5.7.0 Must issue a STARTTLS command first')
s.starttls(context=ctx)
s.ehlo('laptop.test')
assert s.has_extn('auth') and not s.has_extn('starttls'), s.esmtp_features
expect(s.mail('alice@example.test'), 530, '5.7.0 Authentication required')
expect(s.docmd('AUTH', plain('s3cret:pw')), 235, '2.7.0')
expect(s.docmd('AUTH', plain('s3cret:pw')), 503)
expect(s.mail('alice@example.test'), 250)
s.quit()
# Implicit TLS: no STARTTLS to ask for, but MAIL still waits for AUTH.
s = submissions()
assert not s.has_extn('starttls'), s.esmtp_features
expect(s.mail('alice@example.test'), 530, '5.7.0 Authentication required')
s.quit()
"#,
    );
    assert_log_count(&server, &["disconnect from"], 2);
    assert_log_count(&server, &["authenticated as alice"], 1);
    assert_log_count(&server, &["AUTH failed"], 0);
    assert!(server.queue_files(".msg").is_empty());
}

#[test]
fn a_wrong_password_gets_535_after_a_pause_and_the_right_one_still_works() {
    let (server, _, _) = tls_server("wrong-password");
    let out = smtplib(
        &server,
        r#"
s = submission()
start = time.monotonic()
expect(s.docmd('AUTH', plain('s3cret:pW')), 535, '5.7.8')
print('paused', time.monotonic() - start)
# smtplib's login() tries PLAIN, then LOGIN: both refused.
try:
    s.login('alice', 'nope')
    raise AssertionError('logged in with a wrong password')
except smtplib.SMTPAuthenticationError as e:
    assert e.smtp_code == 535, e
# An unknown user gets the same answer.
expect(s.docmd('AUTH', plain('s3cret:pw', 'mallory')), 535, '5.7.8')
s.login('alice', 's3cret:pw')
assert s.sendmail('alice@example.test', ['bob@remote.test'], MESSAGE) == {}
s.quit()
"#,
    );
    let paused: f64 = out
        .trim()
        .strip_prefix("paused ")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(paused >= 0.95, "535 came after {paused}s");
    assert_log_count(&server, &["AUTH failed for 'alice' from 127.0.0.1"], 3);
    assert_log_count(&server, &["AUTH failed for 'mallory'"], 1);
    assert_eq!(server.queue_files(".msg").len(), 1);
}

#[test]
fn after_ten_failures_from_one_address_auth_gets_454_even_with_the_right_password() {
    let (server, _, _) = tls_server("throttle");
    let out = smtplib(
        &server,
        r#"
def attempt(password, source='127.0.0.1'):
    s = submissions(source)
    start = time.monotonic()
    got = s.docmd('AUTH', plain(password))
    took = time.monotonic() - start
    s.close()
    return got, took

# Nine failures at once (each is answered after a pause), then the tenth: all checked.
with ThreadPoolExecutor(9) as pool:
    for got, _ in pool.map(attempt, ['wrong%d' % i for i in range(9)]):
        expect(got, 535, '5.7.8')
expect(attempt('wrong9')[0], 535, '5.7.8')
# The eleventh is not checked: 454 even with the right password, and at once.
expect(attempt('s3cret:pw')[0], 454, '4.7.0')
got, took = attempt('wrong10')
expect(got, 454, '4.7.0')
print('throttled answer took', took)
assert took < 0.9, took
# Another client address is not throttled.
expect(attempt('s3cret:pw', '127.0.0.2')[0], 235, '2.7.0')
"#,
    );
    assert!(out.contains("throttled answer took"), "{out}");
    assert_log_count(&server, &["AUTH failed", "from 127.0.0.1"], 10);
    assert_log_count(&server, &["AUTH refused unchecked", "from 127.0.0.1"], 2);
    assert_log_count(&server, &["authenticated as alice"], 1);
}

#[test]
fn outside_relay_networks_only_a_login_relays() {
    // 127.0.0.1 is in the default relay_networks: move them away from the test client.
    let (server, _, _) = tls_server_with("relay", &["--relay-networks", "10.0.0.0/8"]);
    smtplib(
        &server,
        r#"
# The smtp role in plaintext: mail for local domains only.
s = smtplib.SMTP('127.0.0.1', SMTP_PORT, timeout=20)
s.ehlo('laptop.test')
expect(s.mail('alice@example.test'), 250)
expect(s.rcpt('bob@remote.test'), 554, '5.7.1')
expect(s.rcpt('alice@example.test'), 250)
s.quit()
# TLS alone is no login, and the smtp role offers no AUTH (smtp_auth = no).
s = smtplib.SMTP('127.0.0.1', SMTP_PORT, timeout=20)
s.starttls(context=ctx)
s.ehlo('laptop.test')
assert not s.has_extn('auth'), s.esmtp_features
expect(s.docmd('AUTH', plain('s3cret:pw')), 503)
expect(s.mail('alice@example.test'), 250)
expect(s.rcpt('bob@remote.test'), 554, '5.7.1')
s.quit()
# The same RCPT over submission, logged in: accepted and queued.
s = submission()
s.login('alice', 's3cret:pw')
expect(s.mail('alice@example.test'), 250)
expect(s.rcpt('bob@remote.test'), 250, '2.1.5')
expect(s.data(MESSAGE), 250, '2.0.0 Ok: queued as')
s.quit()
"#,
    );
    let envelopes = server.queue_files(".msg");
    assert_eq!(envelopes.len(), 1, "only the logged-in message");
    assert_relayed_for_alice(&server, envelopes[0].trim_end_matches(".msg"));
    assert_log_count(&server, &["authenticated as alice"], 1);
}

#[test]
fn sender_login_match_lets_alice_use_only_her_own_addresses() {
    let (server, _, _) = tls_server("login-match");
    smtplib(
        &server,
        r#"
s = submission()
s.login('alice', 's3cret:pw')
for sender in ['bob@example.test', 'alice@remote.test', 'team@mx.test', 'alice.x@example.test']:
    expect(s.mail(sender), 553, '5.7.1')
# Her name at each local domain (the host name is one), in any case, and team@ listed for her.
for sender in ['alice@example.test', 'ALICE@Example.Test', 'alice@mx.test', 'team@example.test']:
    expect(s.mail(sender), 250, '2.1.0')
    expect(s.rset(), 250)
assert s.sendmail('team@example.test', ['bob@remote.test'], MESSAGE) == {}
s.quit()
"#,
    );
    let envelopes = server.queue_files(".msg");
    assert_eq!(envelopes.len(), 1);
    let env = server.queued_envelope(envelopes[0].trim_end_matches(".msg"));
    assert!(
        env.contains("From: <team@example.test>\n") && env.contains("Auth: alice\n"),
        "{env}"
    );
}

/// Every file under `dir`, read (sockets, such as `spool/control`, hold nothing to read).
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else if path.is_file() {
            files.push((path.display().to_string(), fs::read(&path).unwrap()));
        }
    }
    files
}

#[test]
fn an_authenticated_message_records_the_login_but_never_the_password() {
    let (server, _, _) = tls_server("secrets");
    // Every way a password goes on the wire: PLAIN with an initial response (login()), PLAIN
    // answering a 334, LOGIN's two questions, and a wrong password. The script prints each
    // response line it sent.
    let out = smtplib(
        &server,
        r#"
s = submission()
s.user, s.password = 'alice', 's3cret:pw'
expect(s.auth('LOGIN', s.auth_login, initial_response_ok=False), 235)
print(b64('alice')); print(b64('s3cret:pw'))
s.quit()
s = submission()
expect(s.docmd('AUTH', 'LOGIN ' + b64('alice')), 334)
expect(s.docmd(b64('wr0ng-Pa55')), 535)
print(b64('wr0ng-Pa55'))
s.quit()
s = submission()
expect(s.docmd('AUTH', 'PLAIN'), 334)
expect(s.docmd(plain('s3cret:pw')[len('PLAIN '):]), 235)
print(plain('s3cret:pw')[len('PLAIN '):])
s.quit()
s = submission()
s.login('alice', 's3cret:pw')
assert s.sendmail('alice@example.test', ['bob@remote.test'], MESSAGE) == {}
s.quit()
"#,
    );
    let envelopes = server.queue_files(".msg");
    assert_eq!(envelopes.len(), 1);
    let id = envelopes[0].trim_end_matches(".msg");
    assert_relayed_for_alice(&server, id);
    let (received, _) = split_received(&server.queued_message(id));
    assert!(
        received.contains("\r\n\t(authenticated)\r\n") && received.contains(" with ESMTPSA id "),
        "{received}"
    );
    assert!(!received.contains("alice"), "who logged in: {received}");
    // Every session has ended, so the log is complete.
    assert_log_count(&server, &["disconnect from"], 4);
    assert_log_count(&server, &["authenticated as alice"], 3);
    assert_log_count(&server, &["AUTH failed for 'alice'"], 1);
    server.wait_for_log_with(&[id, "auth=alice"]);
    let log = server.log_lines().join("\n");

    // The secrets: what the client sent, the passwords, and the hash in pieces.
    let mut secrets: Vec<String> = out.lines().map(str::to_string).collect();
    // base64 of "\0alice\0s3cret:pw", as login() sends it.
    assert!(secrets.contains(&"AGFsaWNlAHMzY3JldDpwdw==".to_string()));
    secrets.retain(|s| s != "YWxpY2U="); // "alice", which may be shown
    secrets.extend([PASSWORD.to_string(), "wr0ng-Pa55".to_string()]);
    let hash = USERS.split(':').nth(1).unwrap();
    let digest = hash.rsplit('$').next().unwrap();
    secrets.push(hash.to_string());
    secrets.push("postilionsalt".to_string());
    secrets.extend(
        digest
            .as_bytes()
            .chunks(8)
            .map(|c| String::from_utf8_lossy(c).into()),
    );
    let files = files_under(&server.spool);
    assert!(files.len() >= 2, "{files:?}");
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "{secret:?} in the log:\n{log}"
        );
        for (path, bytes) in &files {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret:?} in {path}"
            );
        }
    }
}

/// Twenty wrong passwords sent at once from one address: no more than ten may be checked.
/// (Before the throttle was looked at and counted under the one-check lock, all twenty got
/// 535: a client had `max_connections_per_ip` guesses a burst instead of ten.)
#[test]
fn concurrent_wrong_passwords_from_one_address_get_no_more_than_ten_checks() {
    let (server, _, _) = tls_server("throttle-race");
    let out = smtplib(
        &server,
        r#"
import threading
ready = threading.Barrier(20)
def attempt(i):
    s = submissions()
    ready.wait()
    got = s.docmd('AUTH', plain('wrong%d' % i))
    s.close()
    return got[0]
with ThreadPoolExecutor(20) as pool:
    codes = list(pool.map(attempt, range(20)))
print(sorted(codes))
assert codes.count(535) <= 10, codes
"#,
    );
    assert!(out.contains("454"), "{out}");
}
