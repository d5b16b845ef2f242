//! testssl.sh (Debian's `testssl.sh` package, `make deps` installs it) against the receiving
//! TLS: STARTTLS on the smtp role and implicit TLS on submissions. Protocols, the known
//! vulnerabilities and, on smtp, session tickets, read from its JSON output. Both scans run at
//! once and take about 30 s; without testssl the test says so and passes.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::tls::tls_server;

/// The vulnerability checks of `-U` that apply to a TLS 1.2/1.3 server (testssl's JSON ids).
const VULNERABILITIES: &[&str] = &[
    "heartbleed",
    "CCS",
    "ROBOT",
    "secure_renego",
    "secure_client_renego",
    "CRIME_TLS",
    "POODLE_SSL",
    "fallback_SCSV",
    "SWEET32",
    "FREAK",
    "DROWN",
    "LOGJAM",
    "BEAST",
    "LUCKY13",
    "RC4",
];

/// One line of testssl's JSON output.
#[derive(Debug)]
struct Finding {
    id: String,
    severity: String,
    finding: String,
}

/// Runs testssl with `checks` against `addr` (`-t smtp` if `starttls`), loopback only (no DNS
/// lookups, no OCSP or CRL fetches), its output kept in `dir`; returns its findings.
fn testssl(addr: SocketAddr, starttls: bool, checks: &[&str], dir: &Path) -> Vec<Finding> {
    let name = format!("testssl-{}", addr.port());
    let json = dir.join(format!("{name}.json"));
    let out = fs::File::create(dir.join(format!("{name}.out"))).unwrap();
    let mut command = Command::new("testssl");
    command
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--nodns",
            "none",
        ])
        .args(["--connect-timeout", "10", "--openssl-timeout", "10"])
        .args(checks)
        .arg("--jsonfile")
        .arg(&json);
    if starttls {
        command.args(["-t", "smtp"]);
    }
    let mut child = command
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    // A scan takes about 30 s; a hung one must not hang the test run.
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            panic!("testssl against {addr} still running after 300 s");
        }
        thread::park_timeout(Duration::from_millis(100));
    };
    eprintln!("testssl against {addr}: {:?}, {status}", start.elapsed());
    let lines = Command::new("python3")
        .arg("-c")
        .arg(
            "import json, sys\n\
             for f in json.load(open(sys.argv[1])):\n    \
                 print(f['id'], f['severity'], ' '.join(f['finding'].split()), sep='\\t')\n",
        )
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        lines.status.success(),
        "testssl ({status}) wrote no JSON: {}\n{}",
        String::from_utf8_lossy(&lines.stderr),
        fs::read_to_string(dir.join(format!("{name}.out"))).unwrap_or_default()
    );
    String::from_utf8(lines.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let mut fields = line.splitn(3, '\t').map(str::to_string);
            Finding {
                id: fields.next().unwrap(),
                severity: fields.next().unwrap(),
                finding: fields.next().unwrap_or_default(),
            }
        })
        .collect()
}

/// The finding with `id`, which must be there.
fn finding<'a>(findings: &'a [Finding], id: &str) -> &'a Finding {
    findings
        .iter()
        .find(|f| f.id == id)
        .unwrap_or_else(|| panic!("no {id} in {findings:#?}"))
}

/// What both listeners must show: TLS 1.2 and 1.3 only, every vulnerability check run and
/// passed, and nothing HIGH or CRITICAL but the test certificate's own findings (self-signed,
/// no OCSP or CRL: `cert_*`).
fn assert_sound(findings: &[Finding], role: &str) {
    assert!(
        findings.iter().any(|f| f.id == "scanTime"),
        "{role}: the scan did not finish: {findings:#?}"
    );
    for id in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        let f = finding(findings, id);
        assert!(f.finding.starts_with("not offered"), "{role}: {f:?}");
    }
    for id in ["TLS1_2", "TLS1_3"] {
        let f = finding(findings, id);
        assert!(f.finding.starts_with("offered"), "{role}: {f:?}");
    }
    for id in VULNERABILITIES {
        let f = finding(findings, id);
        // WARN would mean the check could not run; MEDIUM and up, a finding.
        assert!(
            ["OK", "INFO"].contains(&f.severity.as_str()),
            "{role}: {f:?}"
        );
    }
    let bad: Vec<_> = findings
        .iter()
        .filter(|f| ["HIGH", "CRITICAL"].contains(&f.severity.as_str()))
        .filter(|f| !f.id.starts_with("cert"))
        .collect();
    assert!(bad.is_empty(), "{role}: {bad:#?}");
}

#[test]
fn testssl_finds_only_tls12_and_tls13_no_known_vulnerability_and_no_ticket_on_smtp() {
    if Command::new("testssl").arg("--version").output().is_err() {
        eprintln!("testssl is not installed (make deps installs testssl.sh): not run");
        return;
    }
    let (server, submissions, _) = tls_server("testssl");
    let (smtp, dir) = (server.addr, server.dir.clone());
    let on_smtp = thread::spawn(move || testssl(smtp, true, &["-p", "-S", "-U"], &dir));
    let on_submissions = testssl(submissions, false, &["-p", "-U"], &server.dir);
    let on_smtp = on_smtp.join().unwrap();

    assert_sound(&on_smtp, "smtp");
    assert_eq!(
        finding(&on_smtp, "service").finding,
        "smtp",
        "STARTTLS used"
    );
    // No ticket on the smtp role. testssl 3.0 looks for TLS 1.2 (RFC 5077) tickets and says the
    // same of submissions, which does send TLS 1.3 tickets: tls_server.rs's openssl s_client
    // test is the one that tells the roles apart.
    let ticket = finding(&on_smtp, "TLS_session_ticket");
    assert!(ticket.finding.starts_with("no"), "{ticket:?}");
    let resumption = finding(&on_smtp, "sessionresumption_ticket");
    assert_eq!(resumption.finding, "not supported", "{resumption:?}");

    assert_sound(&on_submissions, "submissions");
}
