#![forbid(unsafe_code)]
mod audit;
mod clock;
mod config;
mod decision;
mod identity;
mod metrics;
mod pin;
mod policy;
mod store;
mod tokens;
mod yamlspan;
fn main() {}
