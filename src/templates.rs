//! HTML pages from templates. The built-in templates are compiled into the
//! binary; `pages.templates` names a folder whose files of the same name
//! replace them. Output is auto-escaped. Pages need no JavaScript.

use std::path::PathBuf;

use minijinja::{Environment, Value};

use crate::reply::Reply;

const BUILTIN: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("pin.html", include_str!("../templates/pin.html")),
    (
        "pin_setup.html",
        include_str!("../templates/pin_setup.html"),
    ),
    (
        "challenge.html",
        include_str!("../templates/challenge.html"),
    ),
    ("message.html", include_str!("../templates/message.html")),
    ("pending.html", include_str!("../templates/pending.html")),
    ("carried.html", include_str!("../templates/carried.html")),
    ("email.html", include_str!("../templates/email.html")),
    (
        "email_code.html",
        include_str!("../templates/email_code.html"),
    ),
    (
        "email_otp_subject.txt",
        include_str!("../templates/email_otp_subject.txt"),
    ),
    ("email_otp.txt", include_str!("../templates/email_otp.txt")),
    (
        "email_otp.html",
        include_str!("../templates/email_otp.html"),
    ),
    ("account.html", include_str!("../templates/account.html")),
    (
        "pin_forgot.html",
        include_str!("../templates/pin_forgot.html"),
    ),
    (
        "pin_reset.html",
        include_str!("../templates/pin_reset.html"),
    ),
    (
        "pin_login.html",
        include_str!("../templates/pin_login.html"),
    ),
    (
        "mail_pin_reset_subject.txt",
        include_str!("../templates/mail_pin_reset_subject.txt"),
    ),
    (
        "mail_pin_reset.txt",
        include_str!("../templates/mail_pin_reset.txt"),
    ),
    (
        "mail_pin_reset.html",
        include_str!("../templates/mail_pin_reset.html"),
    ),
    (
        "sms_pin_reset.txt",
        include_str!("../templates/sms_pin_reset.txt"),
    ),
    (
        "mail_pin_suspended_subject.txt",
        include_str!("../templates/mail_pin_suspended_subject.txt"),
    ),
    (
        "mail_pin_suspended.txt",
        include_str!("../templates/mail_pin_suspended.txt"),
    ),
    (
        "mail_pin_suspended.html",
        include_str!("../templates/mail_pin_suspended.html"),
    ),
];

pub const CSS: &str = include_str!("../templates/stepgate.css");

pub struct Pages {
    env: Environment<'static>,
    site: String,
}

impl Pages {
    /// Build the environment; templates in `dir` override the built-in ones.
    /// Every template is loaded once here, so a broken override fails at
    /// start-up, not on a user's request.
    pub fn new(dir: Option<PathBuf>, site: &str) -> Result<Pages, String> {
        let mut env = Environment::new();
        env.set_loader(move |name| {
            if let Some(d) = &dir {
                let p = d.join(name);
                if p.is_file() {
                    return std::fs::read_to_string(&p).map(Some).map_err(|e| {
                        minijinja::Error::new(
                            minijinja::ErrorKind::TemplateNotFound,
                            format!("{}: {e}", p.display()),
                        )
                    });
                }
            }
            Ok(BUILTIN
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| t.to_string()))
        });
        for (name, _) in BUILTIN {
            env.get_template(name)
                .map_err(|e| format!("template {name}: {e}"))?;
        }
        Ok(Pages {
            env,
            site: site.to_string(),
        })
    }

    pub fn render(&self, status: u16, name: &str, ctx: Value) -> Reply {
        let ctx = minijinja::context! { site => &self.site, ..ctx };
        match self.env.get_template(name).and_then(|t| t.render(ctx)) {
            Ok(html) => Reply::html(status, html),
            Err(e) => {
                tracing::error!(target: "stepgate", template = name, error = %e, "template failed to render");
                Reply::text(
                    500,
                    "stepgate could not render this page; the error is in the gateway log.",
                )
            }
        }
    }

    /// The email carrying a code: which site asks, the code, when it expires.
    pub fn otp_mail(
        &self,
        to: &str,
        code: &str,
        ttl: std::time::Duration,
        expires_at: i64,
        confirm: &[(String, String)],
    ) -> crate::outbound::mail::Outgoing {
        let confirm: Vec<minijinja::Value> = confirm
            .iter()
            .map(|(name, value)| minijinja::context! { name, value })
            .collect();
        let ctx = minijinja::context! { site => &self.site, code, minutes => ttl.as_secs().div_ceil(60), expires => crate::util::clock::human_time(expires_at), confirm };
        let render = |name: &str| {
            self.env.get_template(name).and_then(|t| t.render(&ctx)).unwrap_or_else(|e| {
            tracing::error!(target: "stepgate", template = name, error = %e, "mail template failed");
            format!("Your code: {code}")
        })
        };
        crate::outbound::mail::Outgoing {
            to: to.to_string(),
            subject: render("email_otp_subject.txt").trim().to_string(),
            text: render("email_otp.txt"),
            html: render("email_otp.html"),
        }
    }

    fn render_text(&self, name: &str, ctx: &Value, fallback: &str) -> String {
        self.env
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .unwrap_or_else(|e| {
                tracing::error!(target: "stepgate", template = name, error = %e, "message template failed");
                fallback.to_string()
            })
    }

    /// The forgot-PIN email: a reset link, or a code.
    pub fn reset_mail(
        &self,
        to: &str,
        link: Option<&str>,
        code: Option<&str>,
        minutes: u64,
    ) -> crate::outbound::mail::Outgoing {
        let ctx = minijinja::context! { site => &self.site, link, code, minutes };
        let fallback = link.or(code).unwrap_or_default();
        crate::outbound::mail::Outgoing {
            to: to.to_string(),
            subject: self
                .render_text("mail_pin_reset_subject.txt", &ctx, "Reset your PIN")
                .trim()
                .to_string(),
            text: self.render_text("mail_pin_reset.txt", &ctx, fallback),
            html: self.render_text("mail_pin_reset.html", &ctx, fallback),
        }
    }

    /// The notice that the PIN is suspended after `failures` wrong tries in
    /// a row; `forgot`: the forgot-PIN page, when the public URL is known.
    /// The caller fills in `to`.
    pub fn suspended_mail(
        &self,
        failures: u32,
        forgot: Option<&str>,
    ) -> crate::outbound::mail::Outgoing {
        let ctx = minijinja::context! { site => &self.site, failures, forgot };
        let fallback = "Your PIN is suspended after too many wrong tries. Reset it with 'Forgot PIN' or ask your helpdesk.";
        crate::outbound::mail::Outgoing {
            to: String::new(),
            subject: self
                .render_text(
                    "mail_pin_suspended_subject.txt",
                    &ctx,
                    "Your PIN is suspended",
                )
                .trim()
                .to_string(),
            text: self.render_text("mail_pin_suspended.txt", &ctx, fallback),
            html: self.render_text("mail_pin_suspended.html", &ctx, fallback),
        }
    }

    /// The forgot-PIN text message.
    pub fn sms_text(&self, code: &str, minutes: u64) -> String {
        let ctx = minijinja::context! { site => &self.site, code, minutes };
        self.render_text("sms_pin_reset.txt", &ctx, code)
            .trim()
            .to_string()
    }

    /// A page with a heading, a sentence and an optional link.
    pub fn message(
        &self,
        status: u16,
        heading: &str,
        message: &str,
        link: Option<(&str, &str)>,
    ) -> Reply {
        self.render(
            status,
            "message.html",
            minijinja::context! { heading, message, link => link.map(|l| l.0), link_text => link.map(|l| l.1) },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_and_overrides_apply() {
        let p = Pages::new(None, "site").unwrap();
        let r = p.message(400, "Bad", "<script>x</script>", None);
        let body = String::from_utf8(r.body.to_vec()).unwrap();
        assert!(body.contains("&lt;script&gt;") && !body.contains("<script>"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("message.html"), "custom {{ heading }}").unwrap();
        let p = Pages::new(Some(dir.path().to_path_buf()), "site").unwrap();
        assert_eq!(&p.message(200, "H", "m", None).body[..], b"custom H");
    }
}
