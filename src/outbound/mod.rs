//! Messages that leave stepgate: mail (SMTP or a mailbox folder), webhooks
//! and SMS. Sending never blocks a request: deliveries run in the background
//! with timeouts.

pub mod mail;
pub mod notify;
