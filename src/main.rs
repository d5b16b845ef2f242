//! Postilion, a minimal durable MTA: command line, configuration and wiring. No logic here.

// No unsafe code but one call, allowed where it is (code_pages::release) with why it is sound.
#![deny(unsafe_code)]
#![deny(unused_must_use)]

mod aliases;
mod auth;
mod code_pages;
mod config;
mod datetime;
mod delivery;
mod directory;
mod envelope;
mod group_sync;
mod log;
mod maildrop;
mod missing_headers;
mod passwd;
mod pickup;
mod privileges;
mod queue;
mod sendmail;
mod server;
mod smtp;
mod spool;
mod stamp;
mod stream;
mod sysexits;
mod systemd;
mod tls;
mod users;

use std::io::{BufRead, Read};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use config::{Config, RawConfig, KEYS, SWITCHES};
use privileges::RunAs;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use sysexits::{EX_DATAERR, EX_IOERR, EX_OSERR, EX_USAGE};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn usage() -> String {
    let mut text = format!(
        "postilion {VERSION}: a minimal, durable mail transfer agent\n\n\
         Usage:\n  postilion serve [--config FILE] [--KEY VALUE ...]\n  \
         postilion check-config [--config FILE] [--KEY VALUE ...]\n  \
         postilion passwd [NAME] < password   (prints a line for users_file)\n  \
         postilion sendmail [-t] [-i] [-f SENDER] [-F NAME] [-C FILE] [RECIPIENT ...] < message\n  \
         postilion queue list|show ID [--body]|flush [ID]|delete ID|hold ID|release ID|\
         bounce ID [--config FILE]\n  \
         mailq [--config FILE]   (postilion queue list)\n  \
         postilion --help | --version\n\n\
         Every configuration key is also a flag (local_domains is --local-domains);\n\
         a flag wins over the file. Keys and defaults:\n"
    );
    for key in KEYS {
        let default = if key.default.is_empty() {
            "(none)"
        } else {
            key.default
        };
        text.push_str(&format!(
            "  --{:<24} {} [{}]\n",
            key.name.replace('_', "-"),
            key.help,
            default
        ));
    }
    text
}

fn main() -> ExitCode {
    let mut args = std::env::args();
    // Invoked through a link named sendmail (/usr/sbin/sendmail, /usr/lib/sendmail) or mailq.
    let invoked_as = args.next().unwrap_or_default();
    let args: Vec<String> = args.collect();
    let queue_config = |args: &[String]| load_config(args).map(|(_, config)| config);
    match Path::new(&invoked_as)
        .file_name()
        .and_then(|name| name.to_str())
    {
        Some("sendmail") => return sendmail::main(&args),
        Some("mailq") => {
            let list: Vec<String> = ["list".to_string()].into_iter().chain(args).collect();
            return queue::run(&list, &queue_config);
        }
        _ => {}
    }
    match args.first().map(String::as_str) {
        Some("queue") => queue::run(&args[1..], &queue_config),
        Some("serve") => serve(&args[1..]),
        Some("sendmail") => sendmail::main(&args[1..]),
        Some("check-config") => check_config(&args[1..]),
        Some("passwd") => passwd(&args[1..]),
        Some("--help" | "-h" | "help") => {
            print!("{}", usage());
            ExitCode::SUCCESS
        }
        Some("--version" | "-V") => {
            println!("postilion {VERSION}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("postilion: unknown command '{other}' (try 'postilion --help')");
            ExitCode::from(2)
        }
        None => {
            eprint!("{}", usage());
            ExitCode::from(2)
        }
    }
}

/// Reads `--config FILE` and the flags into a checked `Config`; errors are one line.
fn load_config(args: &[String]) -> Result<(RawConfig, Config), String> {
    let mut options = getopts::Options::new();
    options.optopt("", "config", "configuration file", "FILE");
    let flags: Vec<String> = KEYS.iter().map(|k| k.name.replace('_', "-")).collect();
    for (key, flag) in KEYS.iter().zip(&flags) {
        match SWITCHES.contains(&key.name) {
            true => options.optflagopt("", flag, key.help, "yes|no"),
            false => options.optopt("", flag, key.help, "VALUE"),
        };
    }
    let matches = options.parse(args).map_err(|e| e.to_string())?;
    if let Some(extra) = matches.free.first() {
        if let Some(flag) = SWITCHES
            .iter()
            .map(|name| name.replace('_', "-"))
            .find(|flag| matches.opt_present(flag) && ["yes", "no"].contains(&extra.as_str()))
        {
            return Err(format!(
                "unexpected argument '{extra}' (--{flag} alone means yes; else --{flag}={extra})"
            ));
        }
        return Err(format!("unexpected argument '{extra}'"));
    }
    let mut raw = RawConfig::default();
    if let Some(path) = matches.opt_str("config") {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        raw.read_file(Path::new(&path), &text)
            .map_err(|e| e.to_string())?;
    }
    for (key, flag) in KEYS.iter().zip(&flags) {
        if let Some(value) = matches.opt_str(flag) {
            raw.set_flag(key.name, value);
        } else if matches.opt_present(flag) {
            // A switch given alone.
            raw.set_flag(key.name, "yes".into());
        }
    }
    let config = raw.build(&system_hostname()).map_err(|e| e.to_string())?;
    Ok((raw, config))
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| smtp::address::is_domain(name))
        .unwrap_or_else(|| "localhost".into())
}

fn check_config(args: &[String]) -> ExitCode {
    match load_config(args).and_then(|(raw, config)| check_files(&config).map(|()| (raw, config))) {
        Ok((raw, config)) => {
            print!("{}", raw.effective(&config));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("postilion: {e}");
            ExitCode::from(2)
        }
    }
}

/// What `serve` would refuse in the configuration: the user to run as (when this is run as
/// root, as `serve` would be), certificate and key, users.
fn check_files(config: &Config) -> Result<(), String> {
    RunAs::decide(&config.user, config.allow_root)?;
    if let Some(files) = &config.tls {
        tls::ServerTls::load(files, config.submission_tls_tickets)
            .map_err(|e| format!("TLS: {e}"))?;
    }
    if let Some(path) = &config.users_file {
        users::UsersFile::load(path).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `postilion passwd [NAME]`: hashes one password line from standard input and prints
/// `name:hash` for the users file (just the hash without a name).
fn passwd(args: &[String]) -> ExitCode {
    const USAGE: &str = "usage: postilion passwd [NAME] < password";
    let name = match args {
        [] => None,
        [name] => match users::login_name(name) {
            Some(name) => Some(name),
            None => {
                eprintln!(
                    "postilion passwd: '{name}' is not a login name (1 to 64 letters, digits, \
                     '.', '_', '-', starting with a letter or digit)\n{USAGE}"
                );
                return ExitCode::from(EX_USAGE);
            }
        },
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(EX_USAGE);
        }
    };
    // One line, bounded: a longer one is refused below as too long.
    let mut line = Vec::new();
    let limit = users::MAX_PASSWORD_LEN as u64 + 2;
    if let Err(e) = std::io::stdin()
        .lock()
        .take(limit)
        .read_until(b'\n', &mut line)
    {
        eprintln!("postilion passwd: cannot read the password: {e}");
        return ExitCode::from(EX_IOERR);
    }
    let password = match users::password_from_line(&line) {
        Ok(password) => password,
        Err(why) => {
            eprintln!("postilion passwd: {why}");
            return ExitCode::from(EX_DATAERR);
        }
    };
    match users::hash_password(password) {
        Ok(hash) => {
            match name {
                Some(name) => println!("{name}:{hash}"),
                None => println!("{hash}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("postilion passwd: cannot hash the password: {e}");
            ExitCode::from(EX_OSERR)
        }
    }
}

fn serve(args: &[String]) -> ExitCode {
    // Before any thread: every file mapping is the loader's (see code_pages).
    let loaded = code_pages::Loaded::now();
    let (raw, config) = match load_config(args) {
        Ok((raw, config)) => (raw, Arc::new(config)),
        Err(e) => {
            eprintln!("postilion: {e}");
            return ExitCode::from(2);
        }
    };
    log::init();
    // Caught from the start: a stop asked for while starting is a stop.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(signals) => signals,
        Err(e) => {
            ::log::error!("cannot start: signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    match start(Arc::clone(&config)) {
        Ok((server, delivery, pickup)) => {
            let running = raw.effective(&config);
            // Listeners bound, spool recovered, delivery running: systemd may start what needs
            // mail.
            systemd::ready();
            // Start-up is over: the code and data it alone ran and read need not stay mapped.
            // Settled once the daemon's own timers have run: a queue scan and a look.
            code_pages::give_back(loaded, config.queue_scan_interval + code_pages::PERIOD);
            wait_for_stop(&mut signals, args, &running, &server);
            // A second SIGTERM or SIGINT during the stop: stop now. Nothing acknowledged is
            // lost by it (invariant 1); what is in flight is simply done again.
            let last_words = delivery.last_words();
            let impatient = std::thread::spawn(move || {
                if signals.forever().any(|signal| signal != SIGHUP) {
                    ::log::warn!("second stop signal: exiting now");
                    last_words.write_unsaved();
                    std::process::exit(0);
                }
            });
            drop(impatient);
            stop(&config, &server, delivery, pickup);
            ExitCode::SUCCESS
        }
        Err(e) => {
            ::log::error!("cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or SIGINT; at SIGHUP reads the certificate and the aliases again at
/// once (both are also re-read whenever they change), and the configuration, saying what it
/// cannot apply.
fn wait_for_stop(signals: &mut Signals, args: &[String], running: &str, server: &server::Server) {
    for signal in signals.forever() {
        if signal != SIGHUP {
            return;
        }
        server.reload();
        match load_config(args) {
            Ok((raw, config)) => {
                let (old, new) = (running, raw.effective(&config));
                let changed: Vec<&str> = new
                    .lines()
                    .filter(|line| !old.lines().any(|o| o == *line))
                    .filter_map(|line| line.split(" = ").next())
                    .collect();
                match changed.is_empty() {
                    true => ::log::info!(
                        "SIGHUP: configuration unchanged; aliases, users and certificates are \
                         re-read when their files change"
                    ),
                    false => ::log::warn!(
                        "SIGHUP: changed keys need a restart to take effect: {}",
                        changed.join(", ")
                    ),
                }
            }
            Err(e) => ::log::error!("SIGHUP: configuration not re-read: {e}"),
        }
    }
}

/// Stops taking mail, lets what is in flight finish within `shutdown_timeout`, and says so.
fn stop(
    config: &Config,
    server: &server::Server,
    delivery: delivery::Delivery,
    pickup: pickup::Pickup,
) {
    let deadline = Instant::now() + config.shutdown_timeout;
    systemd::stopping();
    ::log::info!(
        "stopping: no new mail taken, {} s for what is in flight",
        config.shutdown_timeout.as_secs()
    );
    // Nothing new from the maildrop either; what is there waits for the next start.
    let pickup = std::thread::spawn(move || pickup.stop());
    // Delivery stops handing out messages now, while the sessions drain, not after.
    let deliveries = std::thread::spawn(move || delivery.stop(deadline));
    let sessions = server.shut_down(deadline);
    let deliveries = deliveries.join().unwrap_or(0);
    let _ = pickup.join();
    ::log::info!(
        "stopped ({sessions} sessions and {deliveries} deliveries cut off at the deadline)"
    );
}

/// Opens the spool and binds the listeners as whoever started it; then, started as root,
/// switches to `user` (the files named in the configuration are read as that user, so that
/// what works at start keeps working when they are read again); then starts delivery and the
/// accept loops, and the thread that takes in what sendmail left in the maildrop (its first
/// look, at what was left while the daemon was stopped, runs beside the start, not before
/// READY=1: a full maildrop never makes a start time out).
type Running = (Arc<server::Server>, delivery::Delivery, pickup::Pickup);

fn start(config: Arc<Config>) -> Result<Running, String> {
    privileges::set_umask();
    let run_as = RunAs::decide(&config.user, config.allow_root)?;
    let owner = run_as.owner();
    let spool = Arc::new(spool::Spool::open(&config.spool, owner).map_err(|e| e.to_string())?);
    privileges::create_dir(&config.mailbox_root, owner)
        .map_err(|e| format!("cannot create {}: {e}", config.mailbox_root.display()))?;
    let mut listeners = Vec::new();
    for listen in &config.listen {
        let (role, addr) = (listen.role, listen.addr);
        let listener = server::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        listeners.push((role, listener, bound));
    }
    match &run_as {
        RunAs::Caller => {}
        RunAs::Root => ::log::warn!(
            "running as root (allow_root): fine for a checkout or a test, not for a server \
             facing the network"
        ),
        RunAs::User(user) => {
            privileges::switch_to(user)?;
            let group = passwd::group_name(user.gid).map_or(String::new(), |g| format!(" {g}"));
            ::log::info!(
                "running as user {} (uid {}, gid {}{group}), no supplementary groups",
                user.name,
                user.uid,
                user.gid
            );
        }
    }
    for dir in spool.dirs() {
        privileges::check_dir(dir, true).map_err(|e| format!("spool: {e}"))?;
    }
    privileges::check_dir(&config.mailbox_root, false).map_err(|e| format!("mailbox_root: {e}"))?;
    let recovery = spool.recover().map_err(|e| e.to_string())?;
    let directory = directory::Directory::load(&config.mailbox_root, config.aliases.as_deref())
        .map_err(|e| e.to_string())?;
    let tls = match &config.tls {
        Some(files) => Some(
            tls::ServerTls::load(files, config.submission_tls_tickets)
                .map_err(|e| format!("TLS: {e}"))?,
        ),
        None => None,
    };
    let users = match &config.users_file {
        Some(path) => Some(users::UsersFile::load(path).map_err(|e| e.to_string())?),
        None => None,
    };
    let listeners = listeners
        .into_iter()
        .map(|(role, listener, bound)| {
            match role {
                config::Role::Smtp => ::log::info!("listening on {bound}"),
                _ => ::log::info!("listening on {bound} ({})", role.name()),
            }
            (role, listener)
        })
        .collect();
    let directory = Arc::new(directory);
    let mut delivery = delivery::start(
        Arc::clone(&config),
        Arc::clone(&spool),
        Arc::clone(&directory),
        recovery.queued.clone(),
        &recovery.left_to_pickup,
    )
    .map_err(|e| format!("cannot start delivery threads: {e}"))?;
    delivery
        .serve_control(&config.spool)
        .map_err(|e| format!("cannot open the control socket: {e}"))?;
    ::log::info!(
        "postilion {VERSION} started as {}: spool {}, {} queued, {} debris removed, {} quarantined",
        config.hostname,
        config.spool.display(),
        recovery.queued.len(),
        recovery.debris_removed,
        recovery.quarantined,
    );
    let pickup = pickup::start(
        Arc::clone(&config),
        Arc::clone(&spool),
        delivery.queued.clone(),
    )
    .map_err(|e| format!("cannot start the maildrop thread: {e}"))?;
    let queued = delivery.queued.clone();
    let server = Arc::new(server::Server::new(
        Arc::clone(&config),
        tls,
        users,
        spool,
        directory,
        queued,
    ));
    server
        .run(listeners)
        .map_err(|e| format!("cannot start a listener thread: {e}"))?;
    Ok((server, delivery, pickup))
}
