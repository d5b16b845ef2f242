//! Log set-up: `env_logger`, level from `RUST_LOG` (default info), one line per event.
//!
//! Under systemd (`JOURNAL_STREAM` set) each line starts with its syslog priority `<N>` and
//! carries no timestamp, since the journal adds its own.

use std::io::Write;

use log::Level;

/// The syslog priority of a log level (RFC 5424 severities).
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

pub fn init() {
    // rustls warns about every odd handshake, without our connection id: one line of ours
    // says it instead.
    let env = env_logger::Env::default().default_filter_or("info,rustls=error");
    let mut builder = env_logger::Builder::from_env(env);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder
            .format(|buf, record| writeln!(buf, "<{}>{}", priority(record.level()), record.args()));
    } else {
        builder.format(|buf, record| {
            writeln!(
                buf,
                "{} {:5} {}",
                buf.timestamp_seconds(),
                record.level(),
                record.args()
            )
        });
    }
    builder.init();
}
