//! Tests of the users file and password checks; compiled only under #[cfg(test)], from the
//! `mod tests` at the end of users.rs.

use super::*;

/// From the Argon2 reference implementation's tests (phc-winner-argon2 `src/test.c`):
/// password "password", salt "somesalt", m=256 KiB, t=2, p=1.
const REFERENCE_ARGON2ID: &str =
    "$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4";

/// `openssl passwd -6 -salt saltsalt secret` (and glibc's crypt(3), the same string).
const OPENSSL_SHA512: &str = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";

/// From Drepper's SHA-crypt specification, with explicit rounds and a salt glibc cut to 16
/// characters: password "This is just a test".
const DREPPER_SHA512: &str = "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0";

/// glibc crypt(3) with 10,000 rounds, a password with a space, a colon and UTF-8.
const GLIBC_SHA512_ROUNDS: &str = "$6$rounds=10000$Dovecot012345678$x7lU3mUOGqxdXfZNtmKP48kPx075igq3aNzTDqmdpikeXFDHqH2id4hW4LeEEdBwwOIdrLUhl4qACijhT/HWs.";

fn parse(text: &str) -> Result<Users, (usize, LineProblem)> {
    Users::parse(text.as_bytes())
}

fn problem(text: &str) -> (usize, LineProblem) {
    match parse(text) {
        Ok(users) => panic!("accepted: {users:?}"),
        Err(e) => e,
    }
}

/// A cheap argon2id hash made by the crate, so that tests need not pay the real cost.
fn cheap_argon2id(password: &[u8]) -> String {
    let params = Params::new(64, 1, 1, None).unwrap();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password)
        .unwrap()
        .to_string()
}

#[test]
fn a_file_with_comments_blank_lines_both_kinds_and_addresses() {
    let text = format!(
        "# users\n\n   \nAlice:{}\r\n  # indented comment\nbob:{OPENSSL_SHA512}:Bob.Smith@Example.ORG, info@example.org ,\"x y\"@example.org\ncarol:{REFERENCE_ARGON2ID}:\n",
        cheap_argon2id(b"alice's")
    );
    let users = parse(&text).unwrap();
    assert_eq!(users.len(), 3);
    let alice = users.verify("alice", b"alice's").unwrap();
    assert_eq!(alice.name, "alice");
    assert!(alice.addresses.is_empty());
    let bob = users.verify("BOB", b"secret").unwrap();
    assert_eq!(bob.name, "bob");
    assert_eq!(
        bob.addresses,
        [
            "bob.smith@example.org",
            "info@example.org",
            "x y@example.org"
        ]
    );
    let carol = users.verify("carol", b"password").unwrap();
    assert!(carol.addresses.is_empty(), "an empty third field is none");
}

#[test]
fn an_empty_file_has_no_users() {
    let users = parse("# nobody yet\n").unwrap();
    assert!(users.is_empty());
    assert_eq!(users.verify("alice", b"x"), None);
    assert!(parse("").unwrap().is_empty());
}

#[test]
fn names_are_case_insensitive_and_kept_in_lower_case() {
    let users = parse(&format!("MiXeD.Case_1-x:{OPENSSL_SHA512}\n")).unwrap();
    for name in ["mixed.case_1-x", "MIXED.CASE_1-X", "MiXeD.Case_1-x"] {
        assert_eq!(
            users.verify(name, b"secret").unwrap().name,
            "mixed.case_1-x"
        );
    }
    assert_eq!(login_name("Alice").as_deref(), Some("alice"));
    assert_eq!(login_name(&"a".repeat(64)), Some("a".repeat(64)));
    for bad in [
        "", ".alice", "-alice", "_a", "al ice", "al@ice", "ålice", "a/b",
    ] {
        assert_eq!(login_name(bad), None, "{bad:?}");
    }
    assert_eq!(login_name(&"a".repeat(65)), None);
}

#[test]
fn bad_lines_are_errors_naming_the_line() {
    let sha = OPENSSL_SHA512;
    let argon = REFERENCE_ARGON2ID;
    let cases: Vec<(String, LineProblem)> = vec![
        ("alice\n".into(), LineProblem::NoHash),
        ("alice $6$x$y\n".into(), LineProblem::NoHash),
        (format!(":{sha}\n"), LineProblem::BadName(String::new())),
        (
            format!("al ice:{sha}\n"),
            LineProblem::BadName("al ice".into()),
        ),
        (
            format!("alice@example.org:{sha}\n"),
            LineProblem::BadName("alice@example.org".into()),
        ),
        ("alice:\n".into(), LineProblem::NotAHash),
        ("alice:hunter2\n".into(), LineProblem::NotAHash),
        (
            format!("alice:{sha}:not-an-address\n"),
            LineProblem::BadAddress("not-an-address".into()),
        ),
        (
            format!("alice:{sha}:a@example.org,,b@example.org\n"),
            LineProblem::BadAddress(String::new()),
        ),
        (
            format!("alice:{sha}:a@example.org,\n"),
            LineProblem::BadAddress(String::new()),
        ),
        (
            format!("alice:{sha}:@example.org\n"),
            LineProblem::BadAddress("@example.org".into()),
        ),
        (
            format!("alice:{sha}:1000:1000::/home/alice::\n"),
            LineProblem::TooManyFields,
        ),
    ];
    for (text, expected) in cases {
        let full = format!("# first\n\n{text}");
        assert_eq!(problem(&full), (3, expected), "{text:?}");
    }
    // The same name twice, whatever its case.
    let text = format!("alice:{sha}\nbob:{argon}\nALICE:{argon}\n");
    assert_eq!(
        problem(&text),
        (
            3,
            LineProblem::DuplicateName {
                name: "alice".into(),
                first: 1
            }
        )
    );
    assert_eq!(problem("alice:$6$\u{0}\n\u{0}x\n").0, 1);
    assert_eq!(
        Users::parse(b"# ok\nal\xffice:x\n").err(),
        Some((2, LineProblem::NotUtf8))
    );
}

#[test]
fn only_argon2id_and_sha512_crypt_are_hashes() {
    let unknown = [
        // bcrypt, MD5-crypt, SHA-256-crypt, yescrypt, argon2i and argon2d, scrypt, PBKDF2.
        ("$2y$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234", "$2y$"),
        ("$1$saltsalt$qjXMvbEw8oaL.CzflDugX/", "$1$"),
        ("$5$saltsalt$eeEGmTFRp0q0MgHwJaPBHsO3eMqTPRIoHcNrwQ28zyC", "$5$"),
        ("$y$j9T$salt$hash", "$y$"),
        ("$argon2i$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$wWKIMhR9lyDFvRz9YTZweHKfbftvj+qf+YFY4NeBbtA", "$argon2i$"),
        ("$argon2d$v=19$m=256,t=2,p=1$c29tZXNhbHQ$x", "$argon2d$"),
        ("$scrypt$ln=16,r=8,p=1$c2FsdA$aGFzaA", "$scrypt$"),
        ("$pbkdf2-sha256$29000$c2FsdA$aGFzaA", "$pbkdf2-sha256$"),
        ("{PLAIN}hunter2", "{PLAIN}"),
        ("{plain}$6$x", "{plain}"),
        ("{BLF-CRYPT}$2y$05$x", "{BLF-CRYPT}"),
        ("{CRYPT}$1$saltsalt$qjXMvbEw8oaL.CzflDugX/", "{CRYPT}$1$"),
        ("{ARGON2ID}$6$x", "{ARGON2ID}$6$"),
        ("$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4", "$…$"),
        ("{nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4}x", "{…}"),
        ("{SHA512-CRYPT}$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4", "{SHA512-CRYPT}$argon2id$"),
    ];
    for (hash, scheme) in unknown {
        let (line, p) = problem(&format!("alice:{hash}\n"));
        assert_eq!(
            (line, p),
            (1, LineProblem::UnknownScheme(scheme.into())),
            "{hash}"
        );
    }
}

#[test]
fn dovecot_scheme_prefixes_are_accepted_when_they_fit() {
    let text = format!(
        "a:{{SHA512-CRYPT}}{OPENSSL_SHA512}\nb:{{CRYPT}}{OPENSSL_SHA512}\nc:{{ARGON2ID}}{REFERENCE_ARGON2ID}\nd:{{sha512-crypt}}{OPENSSL_SHA512}\n"
    );
    let users = parse(&text).unwrap();
    assert!(users.verify("a", b"secret").is_some());
    assert!(users.verify("b", b"secret").is_some());
    assert!(users.verify("c", b"password").is_some());
    assert!(users.verify("d", b"secret").is_some());
}

#[test]
fn malformed_argon2id_strings_are_refused() {
    let bad = [
        // No version: the reference implementation reads that as v=16.
        "$argon2id$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
        "$argon2id$v=16$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
        "$argon2id$v=19$m=256,t=2$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
        "$argon2id$v=19$m=256,t=2,p=1,keyid=AAAA$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
        "$argon2id$v=19$m=256,t=0,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
        "$argon2id$v=19$m=4,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
        "$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ",
        "$argon2id$v=19$m=256,t=2,p=1",
        "$argon2id$v=19$m=256,t=2,p=1$c29tZQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
        "$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4$",
        "$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4===",
        "$argon2id$v=19$m=abc,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
        "$argon2id$",
    ];
    for hash in bad {
        let (line, p) = problem(&format!("alice:{hash}\n"));
        assert_eq!(line, 1);
        assert!(matches!(p, LineProblem::BadHash(_)), "{hash}: {p:?}");
    }
}

#[test]
fn sha512_crypt_strings_are_checked() {
    let hash =
        "TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
    let good = [
        format!("$6$saltsalt${hash}"),
        format!("$6$rounds=1000$saltsalt${hash}"),
        format!("$6$rounds={MAX_SHA_CRYPT_ROUNDS}$saltsalt${hash}"),
        format!("$6$s${hash}"),
        format!("$6$0123456789abcdef${hash}"),
    ];
    for text in &good {
        assert!(parse(&format!("alice:{text}\n")).is_ok(), "{text}");
    }
    let bad = [
        format!("$6${hash}"),
        format!("$6$$saltsalt${hash}"),
        format!("$6$rounds=999$saltsalt${hash}"),
        format!("$6$rounds=abc$saltsalt${hash}"),
        format!("$6$rounds=$saltsalt${hash}"),
        format!("$6$rounds=5000$rounds=5000$saltsalt${hash}"),
        format!("$6$rounds=5000${hash}"),
        format!("$6$0123456789abcdefg${hash}"),
        format!("$6$salt salt${hash}"),
        format!("$6$salt*salt${hash}"),
        format!("$6$saltsalt${}", &hash[1..]),
        format!("$6$saltsalt${hash}A"),
        format!("$6$saltsalt${}+", &hash[1..]),
        format!("$6$saltsalt${hash}$"),
        "$6$".to_string(),
    ];
    for text in &bad {
        let (line, p) = problem(&format!("alice:{text}\n"));
        assert_eq!(line, 1);
        assert!(matches!(p, LineProblem::BadHash(_)), "{text}: {p:?}");
    }
}

#[test]
fn costs_beyond_the_bounds_are_refused() {
    let too_costly = [
        format!("$6$rounds={}$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1", MAX_SHA_CRYPT_ROUNDS + 1),
        "$argon2id$v=19$m=262145,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4".into(),
        "$argon2id$v=19$m=256,t=11,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4".into(),
        "$argon2id$v=19$m=256,t=2,p=17$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4".into(),
    ];
    for text in &too_costly {
        let (line, p) = problem(&format!("alice:{text}\n"));
        assert_eq!(line, 1);
        assert!(matches!(p, LineProblem::CostTooHigh(_)), "{text}: {p:?}");
    }
    let at_the_bounds =
        "$argon2id$v=19$m=262144,t=10,p=16$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4";
    assert!(parse(&format!("alice:{at_the_bounds}\n")).is_ok());
}

#[test]
fn messages_name_file_and_line_but_never_the_hash() {
    let secret_part = "nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4";
    let lines = [
        "alice:$argon2id$v=16$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
        "alice:$argon2i$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
        "alice:{SHA512-CRYPT}$argon2id$v=19$m=256,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
        "alice:$argon2id$v=19$m=999999,t=2,p=1$c29tZXNhbHQ$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
        "alice:nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
        "alice:{PLAIN}nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
        "alice:$nf65EOgLrQMR/uIPnA4rEsF5h7TKyQwu9U1bMCHGi/4",
    ];
    for text in lines {
        let (line, problem) = problem(&format!("{text}\n"));
        let error = UsersError::Line {
            path: PathBuf::from("/etc/postilion/users"),
            line,
            problem,
        };
        let shown = error.to_string();
        assert!(shown.starts_with("/etc/postilion/users:1: "), "{shown}");
        assert!(!shown.contains(&secret_part[..6]), "{shown}");
        assert!(!format!("{error:?}").contains(secret_part), "{error:?}");
    }
    let (_, p) = problem("alice:$2y$10$x\n");
    assert_eq!(
        p.to_string(),
        "unsupported hash scheme '$2y$' (use argon2id from 'postilion passwd', or SHA-512-crypt '$6$')"
    );
}

#[test]
fn verify_takes_the_right_password_only() {
    let argon = cheap_argon2id("pässwörd with spaces".as_bytes());
    let text = format!(
        "a:{argon}\nb:{REFERENCE_ARGON2ID}\nc:{OPENSSL_SHA512}\nd:{DREPPER_SHA512}\ne:{GLIBC_SHA512_ROUNDS}\n"
    );
    let users = parse(&text).unwrap();
    let right: [(&str, &[u8]); 5] = [
        ("a", "pässwörd with spaces".as_bytes()),
        ("b", b"password"),
        ("c", b"secret"),
        ("d", b"This is just a test"),
        ("e", "pa ss:wörd".as_bytes()),
    ];
    for (name, password) in right {
        assert_eq!(users.verify(name, password).unwrap().name, name);
        let mut wrong = password.to_vec();
        wrong[0] ^= 1;
        assert_eq!(users.verify(name, &wrong), None, "{name}");
        assert_eq!(users.verify(name, &password[1..]), None, "{name}");
        assert_eq!(users.verify(name, b""), None, "{name}");
        let mut longer = password.to_vec();
        longer.push(b' ');
        assert_eq!(users.verify(name, &longer), None, "{name}");
    }
    // The password of one user is not another's.
    assert_eq!(users.verify("a", b"secret"), None);
    assert_eq!(users.verify("nobody", b"secret"), None);
    assert_eq!(users.verify("", b"secret"), None);
    assert_eq!(users.verify("c\0", b"secret"), None);
}

#[test]
fn a_password_longer_than_the_bound_never_verifies() {
    let long = vec![b'x'; MAX_PASSWORD_LEN + 1];
    let users = parse(&format!("a:{}\n", cheap_argon2id(&long))).unwrap();
    assert_eq!(users.verify("a", &long), None);
    let just = vec![b'y'; MAX_PASSWORD_LEN];
    let users = parse(&format!("a:{}\n", cheap_argon2id(&just))).unwrap();
    assert!(users.verify("a", &just).is_some());
}

#[test]
fn hashes_made_for_the_file_are_argon2id_at_our_cost_and_verify() {
    let hash = hash_password(b"s3cret").unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(!hash.contains(':') && !hash.contains(char::is_whitespace));
    let users = parse(&format!("alice:{hash}\n")).unwrap();
    assert!(users.verify("alice", b"s3cret").is_some());
    assert_eq!(users.verify("alice", b"s3cret "), None);
    // A fresh salt each time.
    assert_ne!(hash, hash_password(b"s3cret").unwrap());
}

#[test]
fn the_dummy_hash_is_valid_and_costs_what_a_real_one_does() {
    match Hash::parse(DUMMY_HASH) {
        Ok(Hash::Argon2id(hash)) => {
            let params = Params::try_from(hash.as_ref()).unwrap();
            assert_eq!(
                (params.m_cost(), params.t_cost(), params.p_cost()),
                (ARGON2_M_KIB, ARGON2_T, ARGON2_P)
            );
        }
        _ => panic!("the dummy hash does not parse as argon2id"),
    }
}

#[test]
fn may_send_as_own_name_at_local_domains_and_listed_addresses() {
    let text =
        format!("alice:{OPENSSL_SHA512}:Alice.Smith@Example.org, \"sales team\"@shop.example\n");
    let users = parse(&text).unwrap();
    let login = users.verify("alice", b"secret").unwrap();
    let local = ["example.test".to_string(), "mx.test".to_string()];
    let may = |address: &str| {
        let mailbox = address::parse_mailbox(address).unwrap();
        login.may_send_as(&mailbox, &local)
    };
    for ok in [
        "alice@example.test",
        "ALICE@Example.TEST",
        "alice@mx.test",
        "\"alice\"@example.test",
        "alice.smith@example.org",
        "ALICE.SMITH@EXAMPLE.ORG",
        "\"sales team\"@shop.example",
        "\"Sales Team\"@SHOP.example",
    ] {
        assert!(may(ok), "{ok}");
    }
    for refused in [
        "alice@example.org",
        "alice@other.test",
        "bob@example.test",
        "alice+tag@example.test",
        "alice.smith@example.test",
        "alice@example.test.evil",
        "smith@example.org",
        "alice@[127.0.0.1]",
    ] {
        assert!(!may(refused), "{refused}");
    }
}

#[test]
fn password_lines_from_standard_input() {
    assert_eq!(password_from_line(b"s3cret\n"), Ok(&b"s3cret"[..]));
    assert_eq!(password_from_line(b"s3cret\r\n"), Ok(&b"s3cret"[..]));
    assert_eq!(password_from_line(b"s3cret"), Ok(&b"s3cret"[..]));
    assert_eq!(
        password_from_line(b" two words \n"),
        Ok(&b" two words "[..])
    );
    assert_eq!(
        password_from_line("wörd\n".as_bytes()),
        Ok("wörd".as_bytes())
    );
    assert_eq!(password_from_line(b""), Err(BadPassword::Empty));
    assert_eq!(password_from_line(b"\n"), Err(BadPassword::Empty));
    assert_eq!(password_from_line(b"\r\n"), Err(BadPassword::Empty));
    assert_eq!(
        password_from_line(b"a\0b\n"),
        Err(BadPassword::ControlCharacter)
    );
    assert_eq!(
        password_from_line(b"a\rb\n"),
        Err(BadPassword::ControlCharacter)
    );
    assert_eq!(
        password_from_line(b"a\tb\n"),
        Err(BadPassword::ControlCharacter)
    );
    let long = vec![b'x'; MAX_PASSWORD_LEN + 1];
    assert_eq!(password_from_line(&long), Err(BadPassword::TooLong));
    assert!(password_from_line(&long[1..]).is_ok());
}

#[test]
fn load_reads_a_file_and_errors_name_it() {
    let dir = std::env::temp_dir().join(format!("postilion-users-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("users");
    std::fs::write(&path, format!("# test\nalice:{OPENSSL_SHA512}\n")).unwrap();
    let users = Users::load(&path).unwrap();
    assert!(users.verify("alice", b"secret").is_some());
    let shown = format!("{users:?}");
    assert!(
        shown.contains("alice") && !shown.contains("TVLlQcbp"),
        "{shown}"
    );

    std::fs::write(&path, "# test\n\nalice:$1$x$y\n").unwrap();
    let error = Users::load(&path).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!(
            "{}:3: unsupported hash scheme '$1$'",
            path.display()
        )),
        "{error}"
    );
    let missing = dir.join("missing");
    let error = Users::load(&missing).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("cannot read {}", missing.display())),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
