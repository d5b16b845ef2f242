//! Exit statuses of the command-line tools (`sendmail`, `queue`, `passwd`), from sysexits.h.

/// The command was used wrongly.
pub const EX_USAGE: u8 = 64;
/// The input data was wrong (an unknown queue id, a bad message).
pub const EX_DATAERR: u8 = 65;
/// The user is unknown.
pub const EX_NOUSER: u8 = 67;
/// An operating-system error.
pub const EX_OSERR: u8 = 71;
/// An I/O error.
pub const EX_IOERR: u8 = 74;
/// A temporary failure: try again later.
pub const EX_TEMPFAIL: u8 = 75;
/// Not allowed.
pub const EX_NOPERM: u8 = 77;
/// The configuration is wrong.
pub const EX_CONFIG: u8 = 78;
