//! The administrator's console as a library: the full-screen application ([`tui`]) and what it
//! shares with the scriptable subcommands (operator sign-in, exports, finding the server's data
//! directory). The `carapace-console` binary is a thin command-line front over it; the end-to-end
//! tests drive the same [`tui::App`].

pub mod data_dir;
pub mod export;
pub mod lifecycle;
pub mod operator;
pub mod tui;
