//! What the store keeps of a slot, and its byte encoding (sealed before it reaches the file).
//!
//! A small fixed binary layout rather than JSON: every byte is the store's own, so nothing
//! about a token's text needs escaping, and the plaintext buffer is zeroed when dropped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use zeroize::Zeroizing;

use crate::crypto::AesKey;

/// The layout version, first byte of every encoded record. Version 1 (no login guard) is
/// still read.
const VERSION: u8 = 2;

/// One upstream session as stored.
#[derive(Clone)]
pub struct StoredSession {
    /// The token (a header value marked sensitive).
    pub token: HeaderValue,
    /// The session encryption key.
    pub sek: AesKey,
    /// When the token expires, wall clock.
    pub expires_at: SystemTime,
    /// When the login that produced it was sent, wall clock.
    pub issued_at: SystemTime,
    /// Its generation in the slot.
    pub generation: u64,
}

/// A slot's durable state: what a restart needs to carry on without a login or an OTP.
#[derive(Clone, Default)]
pub struct Record {
    /// The session callers use, if any.
    pub session: Option<StoredSession>,
    /// The upstream's latest session, kept after a rejection (a GSTN refresh proves it).
    pub latest: Option<StoredSession>,
    /// When the GSTN portal session opened with an OTP ends.
    pub portal_ends_at: Option<SystemTime>,
    /// The generation the slot's next new token gets.
    pub next_generation: u64,
    /// The login guard: what limits logins for this credential.
    pub guard: StoredGuard,
    /// Counts the writes of replicas sharing the record: a higher one is news.
    pub revision: u64,
    /// Why the last login failed (no secrets), for every replica's status.
    pub last_error: Option<String>,
    /// The upstream's error code of the last failed login.
    pub last_upstream_code: Option<String>,
    /// The app key of the OTP requested last and not yet used (GSTN pairs them), and when
    /// it was requested: the OTP may be submitted through another replica.
    pub otp_app_key: Option<(AesKey, SystemTime)>,
}

/// The login guard's state, by the wall clock: kept so that a restart, or another replica,
/// cannot spend the upstream's login allowance again or retry a rejected password.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct StoredGuard {
    /// When the logins of the current window were sent.
    pub recent: Vec<SystemTime>,
    /// No login before then.
    pub backoff_until: Option<SystemTime>,
    /// Transient failures in a row.
    pub failures: u32,
    /// Why logins are stopped until an operator acts.
    pub lockout: Option<StoredLockout>,
}

/// A lockout as stored: what the upstream refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredLockout {
    /// What was refused.
    pub kind: LockoutKind,
    /// The upstream's error code.
    pub upstream_code: Option<String>,
    /// The upstream's message, where the error carries one.
    pub message: String,
}

/// What a stored lockout is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockoutKind {
    /// The user's password.
    CredentialsRejected,
    /// gstgate's own client id, secret or key.
    ConfigRejected,
    /// The taxpayer disabled API access.
    AccessDisabled,
}

impl LockoutKind {
    fn byte(self) -> u8 {
        match self {
            LockoutKind::CredentialsRejected => 1,
            LockoutKind::ConfigRejected => 2,
            LockoutKind::AccessDisabled => 3,
        }
    }

    fn from_byte(b: u8) -> Result<Self, DecodeError> {
        Ok(match b {
            1 => LockoutKind::CredentialsRejected,
            2 => LockoutKind::ConfigRejected,
            3 => LockoutKind::AccessDisabled,
            _ => return Err(DecodeError::Malformed("bad lockout kind")),
        })
    }
}

/// Why stored bytes are not a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not a record of a version this gstgate knows.
    #[error("malformed record ({0})")]
    Malformed(&'static str),
    /// A newer gstgate wrote it, in a layout this one cannot read (after a rollback, or
    /// while replicas of two versions share one Redis).
    #[error(
        "record version {0} was written by a newer gstgate; this one reads versions 1 to {VERSION}"
    )]
    Newer(u8),
}

impl Record {
    /// The plaintext bytes of the record.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(256));
        out.push(VERSION);
        out.extend_from_slice(&self.next_generation.to_be_bytes());
        put_time(&mut out, self.portal_ends_at);
        put_session(&mut out, self.session.as_ref());
        let same = matches!((&self.session, &self.latest),
            (Some(s), Some(l)) if s.generation == l.generation && s.token == l.token);
        if same {
            out.push(2);
        } else {
            put_session(&mut out, self.latest.as_ref());
        }
        put_guard(&mut out, &self.guard);
        out.extend_from_slice(&self.revision.to_be_bytes());
        put_text(&mut out, self.last_error.as_deref().map(str::as_bytes));
        put_text(
            &mut out,
            self.last_upstream_code.as_deref().map(str::as_bytes),
        );
        match &self.otp_app_key {
            None => out.push(0),
            Some((key, at)) => {
                out.push(1);
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(&millis(*at).to_be_bytes());
            }
        }
        out
    }

    /// A record from its plaintext bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version > VERSION {
            return Err(DecodeError::Newer(version));
        }
        if version == 0 {
            return Err(DecodeError::Malformed("version 0"));
        }
        let next_generation = r.u64()?;
        let portal_ends_at = r.time()?;
        let session = r.session()?;
        let latest = if r.peek() == Some(2) {
            r.u8()?;
            session.clone()
        } else {
            r.session()?
        };
        let (guard, revision, last_error, last_upstream_code, otp_app_key) = if version == 1 {
            (StoredGuard::default(), 0, None, None, None)
        } else {
            (r.guard()?, r.u64()?, r.text()?, r.text()?, r.app_key()?)
        };
        if !r.0.is_empty() {
            return Err(DecodeError::Malformed("trailing bytes"));
        }
        Ok(Self {
            session,
            latest,
            portal_ends_at,
            next_generation,
            guard,
            revision,
            last_error,
            last_upstream_code,
            otp_app_key,
        })
    }
}

/// At most this many login times are kept: more than any upstream's login limit.
const MAX_RECENT: usize = 64;

fn put_guard(out: &mut Vec<u8>, g: &StoredGuard) {
    let recent = &g.recent[g.recent.len().saturating_sub(MAX_RECENT)..];
    out.push(u8::try_from(recent.len()).unwrap_or(u8::MAX));
    for t in recent {
        out.extend_from_slice(&millis(*t).to_be_bytes());
    }
    put_time(out, g.backoff_until);
    out.extend_from_slice(&g.failures.to_be_bytes());
    match &g.lockout {
        None => out.push(0),
        Some(l) => {
            out.push(l.kind.byte());
            put_text(out, l.upstream_code.as_deref().map(str::as_bytes));
            put_text(out, Some(l.message.as_bytes()));
        }
    }
}

fn put_text(out: &mut Vec<u8>, text: Option<&[u8]>) {
    match text {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&u32::try_from(t.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(t);
        }
    }
}

fn millis(t: SystemTime) -> u64 {
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX)
}

fn put_time(out: &mut Vec<u8>, t: Option<SystemTime>) {
    match t {
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&millis(t).to_be_bytes());
        }
        None => out.push(0),
    }
}

fn put_session(out: &mut Vec<u8>, s: Option<&StoredSession>) {
    let Some(s) = s else {
        out.push(0);
        return;
    };
    out.push(1);
    out.extend_from_slice(&s.generation.to_be_bytes());
    out.extend_from_slice(&millis(s.expires_at).to_be_bytes());
    out.extend_from_slice(&millis(s.issued_at).to_be_bytes());
    out.extend_from_slice(s.sek.as_bytes());
    let token = s.token.as_bytes();
    out.extend_from_slice(&u32::try_from(token.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(token);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Malformed("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn instant(&mut self) -> Result<SystemTime, DecodeError> {
        UNIX_EPOCH
            .checked_add(Duration::from_millis(self.u64()?))
            .ok_or(DecodeError::Malformed("time out of range"))
    }

    fn time(&mut self) -> Result<Option<SystemTime>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.instant().map(Some),
            _ => Err(DecodeError::Malformed("bad flag")),
        }
    }

    fn len(&mut self) -> Result<usize, DecodeError> {
        let b = self.take(4)?;
        usize::try_from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .map_err(|_| DecodeError::Malformed("bad length"))
    }

    fn text(&mut self) -> Result<Option<String>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => {
                let n = self.len()?;
                String::from_utf8(self.take(n)?.to_vec())
                    .map(Some)
                    .map_err(|_| DecodeError::Malformed("bad text"))
            }
            _ => Err(DecodeError::Malformed("bad flag")),
        }
    }

    fn app_key(&mut self) -> Result<Option<(AesKey, SystemTime)>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => {
                let key = AesKey::from_slice(self.take(32)?)
                    .map_err(|_| DecodeError::Malformed("bad key"))?;
                Ok(Some((key, self.instant()?)))
            }
            _ => Err(DecodeError::Malformed("bad flag")),
        }
    }

    fn guard(&mut self) -> Result<StoredGuard, DecodeError> {
        let n = self.u8()?;
        let recent = (0..n)
            .map(|_| self.instant())
            .collect::<Result<Vec<_>, _>>()?;
        let backoff_until = self.time()?;
        let b = self.take(4)?;
        let failures = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let lockout = match self.u8()? {
            0 => None,
            kind => Some(StoredLockout {
                kind: LockoutKind::from_byte(kind)?,
                upstream_code: self.text()?,
                message: self.text()?.unwrap_or_default(),
            }),
        };
        Ok(StoredGuard {
            recent,
            backoff_until,
            failures,
            lockout,
        })
    }

    fn session(&mut self) -> Result<Option<StoredSession>, DecodeError> {
        match self.u8()? {
            0 => return Ok(None),
            1 => {}
            _ => return Err(DecodeError::Malformed("bad flag")),
        }
        let generation = self.u64()?;
        let expires_at = self.instant()?;
        let issued_at = self.instant()?;
        let sek =
            AesKey::from_slice(self.take(32)?).map_err(|_| DecodeError::Malformed("bad key"))?;
        let len = self.len()?;
        let mut token = HeaderValue::from_bytes(self.take(len)?)
            .map_err(|_| DecodeError::Malformed("bad token"))?;
        token.set_sensitive(true);
        Ok(Some(StoredSession {
            token,
            sek,
            expires_at,
            issued_at,
            generation,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(generation: u64, token: &'static str) -> StoredSession {
        StoredSession {
            token: HeaderValue::from_static(token),
            sek: AesKey::random(),
            expires_at: UNIX_EPOCH + Duration::from_millis(1_800_000_000_123),
            issued_at: UNIX_EPOCH + Duration::from_millis(1_799_990_000_000),
            generation,
        }
    }

    #[test]
    fn a_record_round_trips_and_garbage_does_not_decode() {
        let s = stored(4, "tok-4");
        let records = [
            Record::default(),
            Record {
                session: Some(s.clone()),
                latest: Some(s.clone()),
                portal_ends_at: Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000)),
                next_generation: 5,
                guard: StoredGuard {
                    recent: vec![UNIX_EPOCH + Duration::from_millis(1_799_990_000_001)],
                    backoff_until: Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
                    failures: 3,
                    lockout: None,
                },
                revision: 9,
                last_error: Some("upstream unavailable: HTTP 503".into()),
                last_upstream_code: None,
                otp_app_key: Some((
                    AesKey::random(),
                    UNIX_EPOCH + Duration::from_secs(1_800_000_000),
                )),
            },
            Record {
                session: None,
                latest: Some(stored(7, "tok-7")),
                portal_ends_at: None,
                next_generation: 8,
                guard: StoredGuard {
                    recent: Vec::new(),
                    backoff_until: None,
                    failures: 0,
                    lockout: Some(StoredLockout {
                        kind: LockoutKind::CredentialsRejected,
                        upstream_code: Some("2150".into()),
                        message: "Invalid login credentials".into(),
                    }),
                },
                revision: 0,
                last_error: None,
                last_upstream_code: Some("2150".into()),
                otp_app_key: None,
            },
        ];
        for r in &records {
            let back = Record::decode(&r.encode()).unwrap();
            assert_eq!(back.next_generation, r.next_generation);
            assert_eq!(back.portal_ends_at, r.portal_ends_at);
            assert_eq!(back.guard, r.guard);
            assert_eq!(back.revision, r.revision);
            assert_eq!(back.last_error, r.last_error);
            assert_eq!(back.last_upstream_code, r.last_upstream_code);
            assert_eq!(
                back.otp_app_key
                    .as_ref()
                    .map(|(k, t)| (k.as_bytes().to_vec(), *t)),
                r.otp_app_key
                    .as_ref()
                    .map(|(k, t)| (k.as_bytes().to_vec(), *t))
            );
            for (a, b) in [(&back.session, &r.session), (&back.latest, &r.latest)] {
                assert_eq!(a.is_some(), b.is_some());
                if let (Some(a), Some(b)) = (a, b) {
                    assert_eq!(a.token, b.token);
                    assert!(a.token.is_sensitive());
                    assert_eq!(a.sek.as_bytes(), b.sek.as_bytes());
                    assert_eq!((a.expires_at, a.issued_at), (b.expires_at, b.issued_at));
                    assert_eq!(a.generation, b.generation);
                }
            }
        }
        for full in [records[1].encode(), records[2].encode()] {
            for cut in 0..full.len() {
                assert!(Record::decode(&full[..cut]).is_err(), "cut at {cut}");
            }
        }
        // A version-1 record (before the guard was kept) still reads, with a clear guard.
        // Version 1 ended before the guard: an empty guard is 7 bytes (no login times, no
        // backoff, no failures, no lockout), then 8 of revision, 2 of absent texts and 1 of
        // an absent app key.
        let plain = Record {
            guard: StoredGuard::default(),
            revision: 0,
            last_error: None,
            last_upstream_code: None,
            otp_app_key: None,
            ..records[2].clone()
        };
        let mut v1 = plain.encode().to_vec();
        v1[0] = 1;
        v1.truncate(v1.len() - 18);
        let back = Record::decode(&v1).unwrap();
        assert_eq!(back.guard, StoredGuard::default());
        // A newer layout is told apart from garbage: the log says to roll forward.
        let mut newer = records[2].encode().to_vec();
        newer[0] = VERSION + 1;
        let Err(err) = Record::decode(&newer) else {
            panic!("a newer version decoded");
        };
        assert_eq!(err, DecodeError::Newer(VERSION + 1));
        assert!(err.to_string().contains("newer gstgate"), "{err}");
        assert!(matches!(
            Record::decode(&[0, 0, 0]),
            Err(DecodeError::Malformed(_))
        ));
    }
}
