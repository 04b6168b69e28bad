#![forbid(unsafe_code)]
mod config;
mod policy;
mod yamlspan;
fn main() {}
