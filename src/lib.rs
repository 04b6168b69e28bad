//! stepgate as a library: the gateway's modules, for the binary, the
//! integration tests and the benchmarks. docs/ARCHITECTURE.md maps them and
//! follows a request through them; DESIGN.md has the request flow.
//!
//! Layers, lowest first (a module imports only from layers below it):
//! `util` · `reply` · `config` · `policy` · `request` · `store` · `auth` · `outbound`
//! · `templates` · `flows` · `gate` · `web` · `edge` · `hold` · `forward` · `proxy` · `runtime`.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod edge;
pub mod flows;
pub mod forward;
pub mod gate;
pub mod hold;
pub mod outbound;
pub mod policy;
pub mod proxy;
pub mod reply;
pub mod request;
pub mod runtime;
pub mod store;
pub mod templates;
pub mod util;
pub mod web;
