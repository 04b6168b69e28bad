//! Running the gateway: the Pingora server and its listeners, hot reload,
//! and the built-in demo upstream.

pub mod admin;
pub mod demo;
pub mod server;
pub mod watch;
