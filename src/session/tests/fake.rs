//! A scripted upstream behind the login seam, and the session managers the rule tests run.
//!
//! The fake keeps the one piece of upstream state the rules react to: the token it has live
//! for each credential (GSTIN and user).
//! Unless a test scripted an answer, it behaves as the API it stands for. NIC e-invoice
//! hands back the live token to a login outside the last 10 minutes of its life (with the
//! force flag inside them, a new one); NIC e-way bill hands back the live token to any login
//! before its expiry; GSTN issues a new token for every refresh or OTP. Like NIC, it states
//! an expiry a little earlier than the moment it stops honouring the token (`grace`): NIC's
//! `TokenExpiry` is whole seconds, and gstgate counts a token's life from when it sent the
//! login.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use secrecy::{ExposeSecret, SecretString};

use crate::config::Config;
use crate::crypto::AesKey;
use crate::metrics::Metrics;
use crate::problem::GatewayError;
use crate::session::auth::{Answer, AuthEndpoint, LoginError, Pending};
use crate::session::{Sessions, Slot};
use crate::store::Store;
use crate::upstream::{Class, Expiry, Login, LoginKind, Upstream, Verdict};

/// NIC e-invoice's force window.
const FORCE_WINDOW: Duration = Duration::from_secs(600);

/// A public key for the upstreams' configuration: the fake never encrypts with it.
const PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA5P5jv+deZldkWzDvgG4d
exPB/vvfPTVCB6Xw0xqrhOx9PyUTAXde860b473b/A6r5odbYCjFktadlGTMpPsv
wpGNCUKHrwjN85WYo5gaZiY3PkboH5JMsvWfRaGrirPJo37m4snlIwueVZ1FuVHp
eWWyrUbQnAeCNOQ1QUKbzdm+9xBIG6SpVuKrVFpiNPpD5u0pcFHoGO+1WZ7D/cfD
VuSv8IlJWc5f3Gfr6kJ+15jbmIgnGvxp9mCsI570vU0KgfAwUplD2aWVKUxJeznl
PcKlX0EMOMP4guHik9yM9Q1ahNBpfPLp+kOUF8yiIBtEFQqxEv1jW9LXkImAjEN3
WwIDAQAB
-----END PUBLIC KEY-----
";

/// The API a fake upstream stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Api {
    Einvoice,
    Ewaybill,
    Gstn,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Einvoice => "einvoice",
            Api::Ewaybill => "ewaybill",
            Api::Gstn => "gstn",
        }
    }
}

/// A scripted answer, taken before the fake's own behaviour.
#[derive(Debug, Clone)]
pub(super) enum Scripted {
    /// The upstream refuses with this class and code.
    Refuse(Class, &'static str),
    /// No connection could be made.
    Unreachable,
    /// A 5xx or garbage reply.
    Unavailable,
    /// The reply takes this long, then the fake answers as it would.
    Slow(Duration),
}

/// One call the fake received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    /// A password login, forced or not.
    Password { force: bool },
    /// A GSTN refresh.
    Refresh,
    /// A GSTN login with an OTP.
    Otp,
    /// A GSTN OTP request.
    OtpRequest,
}

/// The token the fake holds live.
struct Live {
    token: String,
    /// When the fake stops honouring it.
    until: SystemTime,
}

struct Model {
    script: VecDeque<Scripted>,
    calls: Vec<(Instant, Call)>,
    /// The live token of each credential, by `gstin/user`.
    live: HashMap<String, Live>,
    issued: u64,
    /// How long each login takes to answer.
    latency: Duration,
    /// Logins being answered now, and the most there ever were at once.
    in_flight: usize,
    max_in_flight: usize,
}

/// The rig's first credential, whose token `Fake::hold` sets.
const FIRST: &str = "27AAPFU0939F1ZV/u";

/// The fake upstream.
pub(super) struct Fake {
    api: Api,
    /// Life of the tokens it issues.
    life: Duration,
    /// How much longer than the stated expiry it honours a token.
    grace: Duration,
    model: Mutex<Model>,
}

impl Fake {
    /// A fake `api` issuing six-hour tokens, honoured `grace` past their stated expiry.
    pub(super) fn new(api: Api, grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            api,
            life: Duration::from_secs(6 * 3600),
            grace,
            model: Mutex::new(Model {
                script: VecDeque::new(),
                calls: Vec::new(),
                live: HashMap::new(),
                issued: 0,
                latency: Duration::ZERO,
                in_flight: 0,
                max_in_flight: 0,
            }),
        })
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().unwrap()
    }

    /// Queues answers for the next calls.
    pub(super) fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.model().script.extend(answers);
    }

    /// Every call so far, with when it came (Tokio's clock).
    pub(super) fn calls(&self) -> Vec<(Instant, Call)> {
        self.model().calls.clone()
    }

    /// Every call so far, without times.
    pub(super) fn kinds(&self) -> Vec<Call> {
        self.calls().into_iter().map(|(_, c)| c).collect()
    }

    /// Makes the fake hold `token` live until `until`, as if another client had logged in.
    pub(super) fn hold(&self, token: &str, until: SystemTime) {
        self.model().live.insert(
            FIRST.to_owned(),
            Live {
                token: token.to_owned(),
                until,
            },
        );
    }

    /// Forgets every live token, as an upstream that restarted would: the next login of any
    /// credential gets a new token.
    pub(super) fn forget_all(&self) {
        self.model().live.clear();
    }

    /// Makes every login take `latency` to answer, so that logins overlap.
    pub(super) fn set_latency(&self, latency: Duration) {
        self.model().latency = latency;
    }

    /// The most logins the fake was ever answering at once.
    pub(super) fn max_in_flight(&self) -> usize {
        self.model().max_in_flight
    }

    /// A new token, live from now.
    fn issue(&self, m: &mut Model, now: SystemTime, who: &str) -> (String, SystemTime) {
        m.issued += 1;
        let token = format!("{}-token-{}", self.api.name(), m.issued);
        let stated = now + self.life;
        m.live.insert(
            who.to_owned(),
            Live {
                token: token.clone(),
                until: stated + self.grace,
            },
        );
        (token, stated)
    }

    /// The fake's own answer to `call` at `now`: the live token or a new one.
    fn answer(&self, call: Call, now: SystemTime, who: &str) -> Login {
        let mut m = self.model();
        let live = m
            .live
            .get(who)
            .filter(|l| l.until > now)
            .map(|l| (l.token.clone(), l.until - self.grace));
        let keep = match (self.api, call) {
            (Api::Einvoice, Call::Password { force }) => live.filter(|(_, stated)| {
                !force
                    || stated
                        .duration_since(now)
                        .is_ok_and(|left| left > FORCE_WINDOW)
            }),
            (Api::Ewaybill, Call::Password { .. }) => live,
            _ => None,
        };
        let (token, stated) = keep.unwrap_or_else(|| self.issue(&mut m, now, who));
        let expiry = match self.api {
            Api::Einvoice => Expiry::At(stated),
            Api::Ewaybill => Expiry::Unstated,
            Api::Gstn => Expiry::After(self.life),
        };
        Login {
            token: SecretString::from(token),
            sek: AesKey::random(),
            expiry,
        }
    }

    /// Records `call` and plays the scripted answer, if one is queued.
    async fn take(&self, call: Call) -> Result<(), LoginError> {
        let scripted = {
            let mut m = self.model();
            m.calls.push((crate::clock::now(), call));
            m.script.pop_front()
        };
        match scripted {
            None => Ok(()),
            Some(Scripted::Refuse(class, code)) => Err(LoginError::Refused(Verdict {
                class,
                code: Some(code.to_owned()),
                message: Some("refused by the fake".to_owned()),
            })),
            Some(Scripted::Unreachable) => Err(LoginError::Gateway(
                GatewayError::UpstreamUnreachable(crate::problem::Cause::new(
                    std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                )),
            )),
            Some(Scripted::Unavailable) => Err(LoginError::Gateway(
                GatewayError::UpstreamUnavailable("login answered HTTP 503".into()),
            )),
            Some(Scripted::Slow(delay)) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
        }
    }
}

impl AuthEndpoint for Fake {
    fn login<'a>(
        &'a self,
        slot: &'a Slot,
        password: &'a SecretString,
        kind: LoginKind<'a>,
    ) -> Pending<'a, Result<Answer, LoginError>> {
        Box::pin(async move {
            assert_eq!(
                password.expose_secret(),
                "secret",
                "the credential's password"
            );
            let call = match kind {
                LoginKind::Password { force } => Call::Password { force },
                LoginKind::Refresh { .. } => Call::Refresh,
                LoginKind::Otp { .. } => Call::Otp,
                LoginKind::OtpRequest { .. } => Call::OtpRequest,
            };
            let latency = {
                let mut m = self.model();
                m.in_flight += 1;
                m.max_in_flight = m.max_in_flight.max(m.in_flight);
                m.latency
            };
            let taken = self.take(call).await;
            tokio::time::sleep(latency).await;
            self.model().in_flight -= 1;
            taken?;
            let who = format!("{}/{}", slot.credential.gstin, slot.credential.username);
            Ok(Answer {
                login: self.answer(call, crate::clock::wall(), &who),
                server_date: None,
            })
        })
    }

    fn request_otp<'a>(
        &'a self,
        _slot: &'a Slot,
        _password: &'a SecretString,
        _app_key: &'a AesKey,
    ) -> Pending<'a, Result<(), LoginError>> {
        Box::pin(self.take(Call::OtpRequest))
    }
}

/// A session manager with one credential on one upstream of `api`, logging in through
/// `fake`; `extra` is added to the upstream's configuration. The directory holds the key
/// file (and a store, for the tests that use one).
pub(super) struct Rig {
    pub(super) sessions: Arc<Sessions>,
    pub(super) slot: Arc<Slot>,
    pub(super) dir: tempfile::TempDir,
    config: Config,
}

impl Rig {
    pub(super) fn new(api: Api, fake: &Arc<Fake>, extra: &str) -> Self {
        Self::many(api, fake, extra, 1)
    }

    /// As [`Rig::new`] with `n` credentials on the upstream: the first as there, the others
    /// generated GSTINs with user `u`. `slot` is the first's.
    pub(super) fn many(api: Api, fake: &Arc<Fake>, extra: &str, n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("upstream.pem");
        std::fs::write(&key, PUBLIC_KEY).unwrap();
        let (routes, auth_path) = match api {
            Api::Einvoice => ("/eicore/", "/eivital/v1.04/auth"),
            Api::Ewaybill => ("/ewaybillapi/", "/ewaybillapi/v1.03/auth"),
            Api::Gstn => ("/taxpayerapi/", "/taxpayerapi/v1.0/authenticate"),
        };
        let lifetime = if api == Api::Gstn {
            "session_lifetime = \"1d\"\n"
        } else {
            ""
        };
        let text = format!(
            r#"
[server]
[[upstream]]
name = "{name}"
api = "{name}"
base_url = "http://127.0.0.1:9"
routes = ["{routes}"]
auth_path = "{auth_path}"
public_key = "{key}"
client_id = "a"
client_secret = "b"
{extra}
{credentials}"#,
            name = api.name(),
            key = key.display(),
            credentials = (0..n)
                .map(|i| {
                    let gstin = if i == 0 {
                        "27AAPFU0939F1ZV".to_owned()
                    } else {
                        numbered_gstin(i)
                    };
                    format!(
                        "[[credential]]\ngstin = \"{gstin}\"\nusername = \"u\"\npassword = \"secret\"\nupstreams = [\"{}\"]\n{lifetime}\n",
                        api.name()
                    )
                })
                .collect::<String>(),
        );
        let config = Config::parse(&text, std::path::Path::new("c.toml")).unwrap();
        let sessions = Self::sessions(&config, fake);
        let slot = sessions.table().slots[0].clone();
        Self {
            sessions,
            slot,
            dir,
            config,
        }
    }

    fn sessions(config: &Config, fake: &Arc<Fake>) -> Arc<Sessions> {
        let (metrics, _) = Metrics::new();
        let upstream =
            Arc::new(Upstream::from_config(&config.upstreams[0], metrics.clone()).unwrap());
        let tasks = crate::tasks::Tasks::default();
        Sessions::with_auth(
            &[upstream],
            &config.credentials,
            metrics,
            &tasks,
            fake.clone(),
        )
        .unwrap()
    }

    /// The embedded store in the rig's directory, opened (as at start-up) and attached.
    pub(super) fn open_store(&self) -> Arc<Store> {
        let (metrics, _) = Metrics::new();
        let (store, loaded) = Store::open(
            &self.dir.path().join("gstgate.db"),
            None,
            None,
            metrics,
            crate::tasks::Tasks::default(),
        )
        .unwrap();
        self.sessions.resume(&store, loaded);
        store
    }

    /// Joins the group of replicas sharing `memory` (as Redis is shared): this rig's
    /// manager takes up the group's records and takes the group's lease for its logins.
    pub(super) async fn join(&self, memory: &crate::store::Memory, lease: Duration) {
        let (metrics, _) = Metrics::new();
        let tasks = crate::tasks::Tasks::default();
        let store = Store::in_memory(memory, true, metrics, tasks);
        let loaded = store.fetch_all().await.unwrap_or_default();
        self.sessions.resume(&store, loaded);
        store.spawn_writer();
        self.sessions
            .join_group(crate::session::Group { lease, replicas: 2 });
    }

    /// A restart: this manager and its store are gone (after the store wrote what it had
    /// queued, as a `kill -9` after the write leaves it); a new one on the same
    /// configuration, upstream and store file takes its place.
    pub(super) async fn restart(self, store: Arc<Store>, fake: &Arc<Fake>) -> (Self, Arc<Store>) {
        store.flush().await;
        let Rig {
            sessions,
            slot,
            dir,
            config,
        } = self;
        drop((sessions, slot, store));
        let sessions = Self::sessions(&config, fake);
        let slot = sessions.table().slots[0].clone();
        let rig = Rig {
            sessions,
            slot,
            dir,
            config,
        };
        let store = rig.open_store();
        (rig, store)
    }
}

/// The `i`th generated taxpayer: Maharashtra, a PAN-shaped middle made from `i`, a valid
/// check character (as `benches/gateway/scale.rs` makes them).
fn numbered_gstin(i: usize) -> String {
    const CODES: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut letters = i / 10_000;
    let mut pan = String::new();
    for _ in 0..5 {
        pan.insert(0, char::from(b'A' + (letters % 26) as u8));
        letters /= 26;
    }
    let first14 = format!("27{pan}{:04}A1Z", i % 10_000);
    let sum: usize = first14
        .bytes()
        .enumerate()
        .map(|(i, c)| {
            let value = CODES.iter().position(|&x| x == c).unwrap_or(0);
            let product = value * if i % 2 == 0 { 1 } else { 2 };
            product / 36 + product % 36
        })
        .sum();
    format!("{first14}{}", char::from(CODES[(36 - sum % 36) % 36]))
}

/// What the code under test logs, as text.
#[derive(Clone, Default)]
pub(super) struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Captures the log lines of the calling thread until the guard is dropped: a
    /// paused-clock test runs every task of its runtime on that thread.
    pub(super) fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// Everything logged so far.
    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
