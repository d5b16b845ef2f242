//! The SMTP protocol: addresses, commands, replies, the DATA reader, the relay rule, the trace
//! header and the server session state machine.
//!
//! Never sockets, files, clocks or DNS: everything here is driven by its caller, so it is
//! tested reply by reply and fuzzed on raw bytes.

pub mod address;
pub mod command;
pub mod data;
pub mod policy;
pub mod received;
pub mod reply;
pub mod sasl;
pub mod session;
