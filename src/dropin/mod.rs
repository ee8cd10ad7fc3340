//! Drop-in mode: unmodified NIC e-invoice, e-way bill and GSTN clients work through gstgate
//! with only their configuration changed (base URL, the public key they encrypt their login
//! with, their client id and secret).
//!
//! Such a client logs in to gstgate as it would to the API: gstgate checks its client id and
//! secret, the GSTIN, the user and the password against its own configuration (nothing
//! reaches the upstream), and answers with a token and SEK of its own, a drop-in session. Its
//! data calls carry that token; gstgate opens their payloads with the drop-in SEK, calls the
//! upstream with the real session as in gateway mode, and seals the reply for the client.
//! The real upstream session stays gstgate's: shared by every caller and replica, refreshed
//! ahead of time, never shown.
//!
//! * `book`: the drop-in sessions, in memory and in the session store.
//! * `door`: the login: who may log in, and what each API's login asks for.
//! * `limits`: a client's failed guesses and the OTPs clients make the portal send, capped.
//! * Here: [`Dropin`], and how a data call's token is checked.
//!
//! What each API sends and expects is its profile's drop-in face
//! ([`crate::upstream::dropin`]).

mod book;
mod door;
mod limits;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use crate::clients::{Client, ClientRefusal, Clients};
use crate::gstin::Gstin;
use crate::metrics::Metrics;
use crate::store::{Event, Store, DROPIN_PREFIX};
use crate::tasks::Tasks;
use crate::upstream::dropin::Refusal;
use crate::upstream::Upstream;

pub use book::{DropinSession, Owner};
pub use door::Refused;

use book::Book;

/// How often expired drop-in sessions are dropped from memory and the store.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The header names a drop-in client's token arrives in, by API (e-invoice `AuthToken`, e-way
/// bill `authtoken`, GSTN `auth-token`); header names are case-insensitive.
const TOKEN_HEADERS: [&str; 3] = ["authtoken", "auth-token", "auth_token"];

/// The drop-in sessions and the logins that make them.
pub struct Dropin {
    book: Book,
    limits: limits::Limits,
    metrics: Arc<Metrics>,
}

impl Dropin {
    /// No drop-in sessions yet.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            book: Book::new(metrics.clone()),
            limits: limits::Limits::default(),
            metrics,
        }
    }

    /// Keeps drop-in sessions in `store` from now on and takes up those it holds; starts the
    /// sweep of expired ones on `tasks`.
    pub fn attach(self: &Arc<Self>, store: Arc<Store>, tasks: &Tasks) {
        let taken = self.book.attach(store.clone());
        if taken > 0 {
            tracing::info!(sessions = taken, "drop-in sessions taken up from the store");
        }
        let me = self.clone();
        tasks.spawn_until_shutdown(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                me.book.sweep();
            }
        });
        // A token another replica re-issued must stop working here too, not only once it
        // expires: that replica announces the ended record, and this one forgets its copy.
        if let Some(mut events) = store.subscribe() {
            let me = self.clone();
            tasks.spawn_until_shutdown(async move {
                while let Some(event) = events.recv().await {
                    match event {
                        Event::Revision { name, .. } if name.starts_with(DROPIN_PREFIX) => {
                            me.book.forget(&name);
                        }
                        Event::Revision { .. } => {}
                        Event::Reconnected => me.book.forget_all(),
                    }
                }
            });
        }
    }

    /// The drop-in session a data call's headers show: `client`'s live token for this
    /// upstream, and the GSTIN header that token was issued for.
    pub async fn authorize(
        &self,
        client: &Client,
        upstream: &Upstream,
        headers: &HeaderMap,
    ) -> Result<Arc<DropinSession>, Refusal> {
        let token = TOKEN_HEADERS
            .iter()
            .filter_map(|n| headers.get(*n)?.to_str().ok())
            .map(str::trim)
            .find(|t| !t.is_empty())
            .ok_or(Refusal::TokenInvalid)?;
        let session = self.book.find(token).await.ok_or(Refusal::TokenInvalid)?;
        if session.owner.client != client.name || session.owner.upstream != upstream.name {
            return Err(Refusal::TokenInvalid);
        }
        let gstin = gstin_header(headers)?;
        if gstin != session.owner.gstin || !client.allows(&gstin) {
            return Err(Refusal::GstinNotAllowed);
        }
        Ok(session)
    }

    /// Live drop-in sessions per (upstream, client), for the status page and admin API.
    pub fn counts(&self) -> Vec<(Arc<str>, Arc<str>, usize)> {
        self.book.counts()
    }
}

/// The drop-in client a request's client id and secret headers name, before anything else
/// of the request is read.
pub fn identify(clients: &Clients, headers: &HeaderMap) -> Result<Arc<Client>, Refusal> {
    clients.identify(headers).map_err(client_refusal)
}

/// The refusal for a client header problem.
fn client_refusal(r: ClientRefusal) -> Refusal {
    match r {
        ClientRefusal::IdMissing => Refusal::ClientIdMissing,
        ClientRefusal::SecretMissing => Refusal::ClientSecretMissing,
        ClientRefusal::Unknown => Refusal::ClientRejected,
    }
}

/// The GSTIN header of a drop-in call.
fn gstin_header(headers: &HeaderMap) -> Result<Gstin, Refusal> {
    let raw = headers
        .get(&crate::request::GSTIN)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(Refusal::GstinMissing)?;
    Gstin::parse(raw).map_err(|_| Refusal::GstinNotAllowed)
}
