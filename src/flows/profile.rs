//! What PIN recovery needs to know about a user when they are not signed in:
//! the addresses, username and phone number their first-factor token named at
//! enrollment or at their last step-up, indexed so that a forgot-PIN request
//! by email, username or phone finds the account.
//!
//! Must never: tell a caller whether an account exists (callers answer the
//! same either way), or keep an index entry pointing at a user who no longer
//! has that value.

use crate::auth::principal::Principal;
use crate::flows::error::FlowError;
use crate::flows::user::{self, Part};
use crate::store::{keys, Store};

pub use crate::auth::principal::{normalize_phone, Profile};

impl Profile {
    /// Index entries this profile owns, as (kind, normalised value).
    fn index_entries(&self) -> Vec<(&'static str, String)> {
        let mut out: Vec<(&'static str, String)> = self
            .otp_emails
            .iter()
            .map(|e| ("email", e.clone()))
            .collect();
        if let Some(u) = &self.username {
            out.push(("username", u.to_lowercase()));
        }
        if let Some(p) = &self.phone {
            out.push(("phone", p.clone()));
        }
        out
    }

    /// Where a recovery email goes: the address asked for when it is one of
    /// the profile's verified ones, else the first verified address.
    pub fn mail_to(&self, asked: Option<&str>) -> Option<String> {
        match asked {
            Some(a) if self.otp_emails.iter().any(|e| e == a) => Some(a.to_string()),
            _ => self.otp_emails.first().cloned(),
        }
    }
}

/// How a signed-out user names their account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identifier {
    Email(String),
    UserName(String),
    Phone(String),
}

impl Identifier {
    /// Normalise what the user typed; None when it cannot be one.
    pub fn parse(kind: &str, raw: &str) -> Option<Identifier> {
        let t = raw.trim();
        if t.is_empty() || t.len() > 256 {
            return None;
        }
        match kind {
            "email" => t
                .contains('@')
                .then(|| Identifier::Email(t.to_ascii_lowercase())),
            "username" => Some(Identifier::UserName(t.to_lowercase())),
            "phone" => normalize_phone(t).map(Identifier::Phone),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Identifier::Email(_) => "email",
            Identifier::UserName(_) => "username",
            Identifier::Phone(_) => "phone",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            Identifier::Email(v) | Identifier::UserName(v) | Identifier::Phone(v) => v,
        }
    }

    /// A stable name for rate limits, the same whether or not the account
    /// exists.
    pub fn key(&self) -> String {
        format!("{}:{}", self.kind(), self.value())
    }
}

/// The bytes of `p` in its user's record: compact, without the user's id
/// (the record's key names the user).
fn stored(p: &Profile) -> Result<Vec<u8>, FlowError> {
    let bare = Profile {
        sub: String::new(),
        ..p.clone()
    };
    serde_json::to_vec(&bare).map_err(|_| FlowError::Internal)
}

/// `sub`'s profile. A profile in an earlier, larger form is rewritten in the
/// compact one as it is read (only if it did not change in between).
pub async fn load(store: &dyn Store, sub: &str) -> Result<Option<Profile>, FlowError> {
    let Some(raw) = user::read(store, sub, Part::Profile).await? else {
        return Ok(None);
    };
    let Ok(mut p) = serde_json::from_slice::<Profile>(&raw) else {
        return Ok(None);
    };
    p.sub = sub.to_string();
    if let Ok(compact) = stored(&p) {
        if compact != raw {
            user::rewrite(store, sub, Part::Profile, &raw, compact).await;
        }
    }
    Ok(Some(p))
}

/// `sub`'s profile, or one that names only the user when none is stored.
pub async fn load_or_bare(store: &dyn Store, sub: &str) -> Result<Profile, FlowError> {
    Ok(load(store, sub).await?.unwrap_or_else(|| Profile {
        sub: sub.to_string(),
        ..Profile::default()
    }))
}

/// Record what the first-factor token says about `p`, and keep the indexes
/// in step. Costs one read when nothing changed.
pub async fn remember(store: &dyn Store, p: &Principal) -> Result<(), FlowError> {
    let new = Profile::of(p);
    let old = load(store, &p.sub).await?;
    if old.as_ref() == Some(&new) {
        return Ok(());
    }
    user::write(store, &p.sub, Part::Profile, Some(stored(&new)?)).await?;
    let fresh = new.index_entries();
    for (kind, value) in &fresh {
        let (bucket, field) = keys::index(kind, value);
        store.field_put(&bucket, &field, p.sub.as_bytes()).await?;
    }
    if let Some(old) = old {
        for (kind, value) in old.index_entries() {
            if fresh.iter().any(|(k, v)| *k == kind && *v == value) {
                continue;
            }
            // Only drop an entry (in either form) while it still names this user.
            let (bucket, field) = keys::index(kind, &value);
            store
                .field_delete_if(&bucket, &field, p.sub.as_bytes())
                .await?;
            let earlier = keys::index_unbucketed(kind, &value);
            store
                .replace(&earlier, Some(p.sub.as_bytes()), None)
                .await?;
        }
    }
    Ok(())
}

/// The profile an identifier names, if any.
pub async fn find(store: &dyn Store, id: &Identifier) -> Result<Option<Profile>, FlowError> {
    let (bucket, field) = keys::index(id.kind(), id.value());
    let (sub, earlier) = match store.field_get(&bucket, &field).await? {
        Some(sub) => (sub, None),
        None => {
            // An entry an earlier version wrote, under a key of its own.
            let key = keys::index_unbucketed(id.kind(), id.value());
            match store.get(&key).await? {
                Some(sub) => (sub, Some(key)),
                None => return Ok(None),
            }
        }
    };
    let sub = String::from_utf8(sub).map_err(|_| FlowError::Internal)?;
    let prof = load(store, &sub).await?;
    // The index may be stale if the profile changed on another gateway
    // between the two reads; trust only a profile that still has the value.
    let prof = prof.filter(|p| {
        p.index_entries()
            .iter()
            .any(|(k, v)| *k == id.kind() && v == id.value())
    });
    if let Some(key) = earlier {
        // Move the entry into its bucket (only while it is true), and drop
        // the key it had: the next lookup reads the bucket only.
        if prof.is_some() {
            store.field_put(&bucket, &field, sub.as_bytes()).await?;
        }
        store.replace(&key, Some(sub.as_bytes()), None).await?;
    }
    Ok(prof)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn principal(sub: &str, email: &str, username: Option<&str>) -> Principal {
        Principal {
            source: "jwt",
            sub: sub.into(),
            otp_emails: vec![email.into()],
            email: Some(email.into()),
            emails: vec![email.into()],
            session: "s".into(),
            login_time: None,
            expires: 0,
            username: username.map(str::to_string),
            phone: Some("+15550102000".into()),
            pin_session: None,
        }
    }

    #[test]
    fn identifiers_normalise() {
        assert_eq!(
            Identifier::parse("email", " Ann@X.io "),
            Some(Identifier::Email("ann@x.io".into()))
        );
        assert_eq!(Identifier::parse("email", "nope"), None);
        assert_eq!(
            Identifier::parse("phone", "+1 (555) 010-2000"),
            Some(Identifier::Phone("+15550102000".into()))
        );
        assert_eq!(Identifier::parse("phone", "call me"), None);
        assert_eq!(Identifier::parse("phone", "123"), None);
        assert_eq!(
            Identifier::parse("username", "Ann"),
            Some(Identifier::UserName("ann".into()))
        );
    }

    #[tokio::test]
    async fn indexes_follow_profile_changes() {
        let store = MemoryStore::default();
        remember(&store, &principal("u1", "a@x.io", Some("Ann")))
            .await
            .unwrap();
        let by_mail = Identifier::Email("a@x.io".into());
        assert_eq!(find(&store, &by_mail).await.unwrap().unwrap().sub, "u1");
        let by_name = Identifier::UserName("ann".into());
        assert_eq!(find(&store, &by_name).await.unwrap().unwrap().sub, "u1");
        let by_phone = Identifier::Phone("+15550102000".into());
        assert_eq!(find(&store, &by_phone).await.unwrap().unwrap().sub, "u1");
        // The address changes: the old one no longer finds the account.
        remember(&store, &principal("u1", "b@x.io", Some("Ann")))
            .await
            .unwrap();
        assert_eq!(find(&store, &by_mail).await.unwrap(), None);
        assert_eq!(
            find(&store, &Identifier::Email("b@x.io".into()))
                .await
                .unwrap()
                .unwrap()
                .sub,
            "u1"
        );
        assert_eq!(
            find(&store, &Identifier::Email("zz@x.io".into()))
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn an_unbucketed_index_entry_moves_into_its_bucket_when_found() {
        let store = MemoryStore::default();
        remember(&store, &principal("u1", "a@x.io", None))
            .await
            .unwrap();
        // As an earlier version kept it: one key per entry, no bucket.
        let (bucket, field) = keys::index("email", "a@x.io");
        assert!(store.field_delete_if(&bucket, &field, b"u1").await.unwrap());
        let earlier = keys::index_unbucketed("email", "a@x.io");
        store.put(&earlier, b"u1", None).await.unwrap();
        let by_mail = Identifier::Email("a@x.io".into());
        assert_eq!(find(&store, &by_mail).await.unwrap().unwrap().sub, "u1");
        assert_eq!(store.get(&earlier).await.unwrap(), None, "moved");
        assert_eq!(
            store.field_get(&bucket, &field).await.unwrap().as_deref(),
            Some(&b"u1"[..])
        );
        assert_eq!(find(&store, &by_mail).await.unwrap().unwrap().sub, "u1");
        // A stale earlier entry (the user no longer has the address) finds
        // nothing, is deleted, and is not moved.
        let stale = keys::index_unbucketed("email", "old@x.io");
        store.put(&stale, b"u1", None).await.unwrap();
        let by_old = Identifier::Email("old@x.io".into());
        assert_eq!(find(&store, &by_old).await.unwrap(), None);
        assert_eq!(store.get(&stale).await.unwrap(), None);
        let (b2, f2) = keys::index("email", "old@x.io");
        assert_eq!(store.field_get(&b2, &f2).await.unwrap(), None);
        // A change of address drops an earlier-form entry too.
        store.put(&earlier, b"u1", None).await.unwrap();
        remember(&store, &principal("u1", "b@x.io", None))
            .await
            .unwrap();
        assert_eq!(store.get(&earlier).await.unwrap(), None);
        assert_eq!(store.field_get(&bucket, &field).await.unwrap(), None);
        assert_eq!(find(&store, &by_mail).await.unwrap(), None);
    }

    #[tokio::test]
    async fn store_migrate_carries_the_indexes_in_both_forms() {
        let from = MemoryStore::default();
        remember(&from, &principal("u1", "a@x.io", Some("Ann")))
            .await
            .unwrap();
        // One entry as an earlier version kept it.
        let earlier = keys::index_unbucketed("email", "e@x.io");
        from.put(&earlier, b"u1", None).await.unwrap();
        let to = MemoryStore::default();
        // The record and four index entries (email, username, phone, the
        // earlier-form email).
        let n = crate::store::migrate(&from, &to).await.unwrap();
        assert_eq!((n.records, n.index_entries), (1, 4));
        for id in [
            Identifier::Email("a@x.io".into()),
            Identifier::UserName("ann".into()),
            Identifier::Phone("+15550102000".into()),
        ] {
            assert_eq!(find(&to, &id).await.unwrap().unwrap().sub, "u1", "{id:?}");
        }
        let (bucket, field) = keys::index("email", "e@x.io");
        assert_eq!(
            to.field_get(&bucket, &field).await.unwrap().as_deref(),
            Some(&b"u1"[..]),
            "an earlier-form entry lands in its bucket"
        );
        assert_eq!(to.get(&earlier).await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_earlier_record_is_rewritten_compact_when_read() {
        let store = MemoryStore::default();
        let full = br#"{"sub":"ann","emails":["ann@x.io"],"otp_emails":["ann@x.io"],"username":null,"phone":null}"#;
        store.put(&keys::profile("ann"), full, None).await.unwrap();
        let p = load(&store, "ann").await.unwrap().unwrap();
        assert_eq!(p.otp_emails, ["ann@x.io"]);
        assert_eq!(p.sub, "ann");
        // Moved into the user's record, compact and without the id.
        assert_eq!(store.get(&keys::profile("ann")).await.unwrap(), None);
        let now = user::read(&store, "ann", Part::Profile)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(now, br#"{"e":["ann@x.io"]}"#);
        assert_eq!(load(&store, "ann").await.unwrap(), Some(p));
    }
}
