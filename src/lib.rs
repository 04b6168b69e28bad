//! stepgate as a library: the gateway's modules, for the binary, the
//! integration tests and the benchmarks. See DESIGN.md for the request flow.
#![forbid(unsafe_code)]

pub mod assertion;
pub mod audit;
pub mod bounded;
pub mod clock;
pub mod config;
pub mod decision;
pub mod demo;
pub mod endpoints;
pub mod gate;
pub mod identity;
pub mod lifecycle;
pub mod logwriter;
pub mod mail;
pub mod metrics;
pub mod notify;
pub mod otp;
pub mod pages;
pub mod pin;
pub mod policy;
pub mod profile;
pub mod proxy;
pub mod request;
pub mod revoke;
pub mod server;
pub mod store;
pub mod tls;
pub mod tokens;
pub mod watch;
pub mod web;
pub mod yamlspan;
