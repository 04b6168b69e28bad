//! Sending mail: SMTP through lettre (plain, STARTTLS or TLS, optional
//! authentication, bounded by a timeout), or a folder that receives one .eml
//! file per message (development and `stepgate demo`).

use std::path::PathBuf;

use async_trait::async_trait;
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{Mail, MailTransport, SmtpTls};

pub struct Outgoing {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("mail could not be composed: {0}")]
    Compose(String),
    #[error("the mail server refused or could not be reached: {0}")]
    Transport(String),
}

#[async_trait]
pub trait Mailer: Send + Sync {
    async fn send(&self, m: Outgoing) -> Result<(), MailError>;
}

fn compose(from: &Mailbox, m: Outgoing) -> Result<Message, MailError> {
    let to: Mailbox =
        m.to.parse()
            .map_err(|e| MailError::Compose(format!("{}: {e}", m.to)))?;
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(m.subject)
        // Large providers refuse mail without a Message-ID.
        .message_id(None)
        .date_now()
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(m.text),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(m.html),
                ),
        )
        .map_err(|e| MailError::Compose(e.to_string()))
}

pub struct SmtpMailer {
    from: Mailbox,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    timeout: std::time::Duration,
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, m: Outgoing) -> Result<(), MailError> {
        let msg = compose(&self.from, m)?;
        match tokio::time::timeout(self.timeout, self.transport.send(msg)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(MailError::Transport(e.to_string())),
            Err(_) => Err(MailError::Transport(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }
}

pub struct DirMailer {
    from: Mailbox,
    dir: PathBuf,
}

#[async_trait]
impl Mailer for DirMailer {
    async fn send(&self, m: Outgoing) -> Result<(), MailError> {
        let bytes = compose(&self.from, m)?.formatted();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let name = format!(
                "{}-{}.eml",
                crate::util::clock::now(),
                crate::auth::tokens::random_id()
            );
            // Written whole, then renamed: a reader never sees half a message.
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, dir.join(name))
        })
        .await
        .map_err(|e| MailError::Transport(e.to_string()))?
        .map_err(|e| MailError::Transport(format!("cannot write to {}: {e}", self.dir.display())))
    }
}

pub fn build(m: &Mail) -> Result<std::sync::Arc<dyn Mailer>, String> {
    let from: Mailbox = m.from.parse().map_err(|e| format!("mail.from: {e}"))?;
    Ok(match &m.transport {
        MailTransport::Dir(dir) => std::sync::Arc::new(DirMailer {
            from,
            dir: dir.clone(),
        }),
        MailTransport::Smtp(s) => {
            let builder = match s.tls {
                SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host),
                SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host)
                    .map_err(|e| format!("mail.smtp: {e}"))?,
                SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&s.host)
                    .map_err(|e| format!("mail.smtp: {e}"))?,
            };
            let mut builder = builder.port(s.port).timeout(Some(s.timeout));
            if let (Some(u), Some(p)) = (&s.username, &s.password) {
                builder = builder.credentials(Credentials::new(
                    u.clone(),
                    String::from_utf8_lossy(p.expose()).into_owned(),
                ));
            }
            std::sync::Arc::new(SmtpMailer {
                from,
                transport: builder.build(),
                timeout: s.timeout,
            })
        }
    })
}
