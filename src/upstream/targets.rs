//! The base URLs an upstream's requests may go to (`base_url`, or `[[upstream.targets]]`:
//! NIC's IRPs, which share one login), each behind its own circuit breaker
//! (`crate::breaker`), and which one a request goes to.
//!
//! Not a load balancer: every request goes to the first target in configured order whose
//! circuit lets it through, the primary while it is healthy. A call about a document that
//! gstgate saw generated (a read by IRN, a cancel: the profile names the document) goes
//! first to the target that generated it, and always carries the API's portal header naming
//! that target, so that another portal can serve it while its holder is down. Which target
//! generated which document is kept in memory, the newest [`MAX_HOLDERS`] only: after a
//! restart, or for a document generated elsewhere, the caller's own portal header is what
//! routes the call.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use http::{HeaderName, HeaderValue};
use prometheus_client::metrics::gauge::Gauge;

use super::base::Base;
use crate::breaker::{Breaker, Permit, State};
use crate::metrics::{Metrics, Name, TargetLabels};

/// The most documents whose generating target is remembered: about 200 bytes each (the IRN
/// in the map and in the queue), so 10 MiB at most, and calls about a document mostly follow
/// its generation within hours.
pub const MAX_HOLDERS: usize = 50_000;

/// The `target` label of an upstream's only, unnamed target.
pub const DEFAULT_TARGET: &str = "default";

/// One base URL of an upstream.
pub struct Target {
    /// Its portal name (`NIC1`), or [`DEFAULT_TARGET`]: the `target` label and `/status`.
    pub label: Arc<str>,
    /// Its portal name as the header value reads of its documents carry; `None` for an
    /// unnamed target.
    portal: Option<HeaderValue>,
    /// Its base URL.
    pub(super) base: Base,
    /// Its circuit.
    breaker: Arc<Breaker>,
    /// `gstgate_upstream_up{upstream,target}`.
    up: Gauge<i64, AtomicI64>,
}

impl Target {
    /// Its circuit's state now.
    pub fn state(&self) -> State {
        self.breaker.state()
    }

    /// Its circuit's leave for one attempt, or `None` while it is open or being probed.
    pub fn admit(&self) -> Option<Turn<'_>> {
        self.breaker.admit().map(|permit| Turn {
            target: self,
            permit,
        })
    }

    /// An attempt whatever its circuit says, for when no target that it admits could be
    /// reached: an open circuit steers calls away, it never refuses one that this target
    /// might still answer.
    pub fn force(&self) -> Turn<'_> {
        Turn {
            target: self,
            permit: self.breaker.force(),
        }
    }

    /// The gauge follows the circuit after each verdict.
    fn show(&self) {
        self.up
            .set(i64::from(self.breaker.state() == State::Closed));
    }
}

/// How an attempt on a target went, for its circuit.
pub enum Health {
    /// Nothing reached the target (connect failure): a failure, and the next target may
    /// take the request.
    Unreached,
    /// The target failed the request after it was sent (timeout, reset, 5xx).
    Failed,
    /// The target answered.
    Answered,
    /// Says nothing of the target's health (a reply too large, an internal error).
    Unknown,
}

/// A target's leave to take one attempt.
pub struct Turn<'a> {
    /// The target.
    pub target: &'a Target,
    /// Its circuit's leave.
    permit: Permit,
}

impl Turn<'_> {
    /// Records how the attempt went in the target's circuit and gauge.
    pub fn judge(self, health: Health) {
        match health {
            Health::Unreached | Health::Failed => self.permit.failure(),
            Health::Answered => self.permit.success(),
            Health::Unknown => drop(self.permit),
        }
        self.target.show();
    }
}

/// The order in which a request tries the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// As configured: the primary first.
    Configured,
    /// This target (a document's holder) first, then the others as configured.
    First(usize),
    /// The others as configured, this one (which just failed the request) last.
    Last(usize),
}

/// Which target generated which document, bounded, oldest forgotten first.
#[derive(Default)]
struct Holders {
    /// Document → index of its target.
    by_document: HashMap<Box<str>, usize>,
    /// Documents in the order they were remembered.
    order: VecDeque<Box<str>>,
}

/// An upstream's targets, in configured order.
pub struct Targets {
    /// The targets; never empty.
    list: Vec<Target>,
    /// The API's portal header (`irp`), when the targets have portal names.
    header: Option<HeaderName>,
    /// Which target generated which document.
    holders: Mutex<Holders>,
}

impl Targets {
    /// Builds the targets of upstream `upstream` from `(base, portal name)` pairs (bases
    /// already checked), each with a closed circuit.
    pub fn new(
        upstream: &str,
        endpoints: Vec<(Base, Option<HeaderValue>)>,
        header: Option<HeaderName>,
        breaker: (u32, std::time::Duration),
        metrics: &Metrics,
    ) -> Self {
        let list = endpoints
            .into_iter()
            .map(|(base, portal)| {
                let label: Arc<str> = portal
                    .as_ref()
                    .and_then(|p| p.to_str().ok())
                    .unwrap_or(DEFAULT_TARGET)
                    .into();
                let up = metrics
                    .upstream_up
                    .get_or_create(&TargetLabels {
                        upstream: Name(upstream.into()),
                        target: Name(label.clone()),
                    })
                    .clone();
                up.set(1);
                Target {
                    label,
                    portal,
                    base,
                    breaker: Breaker::new(breaker.0, breaker.1),
                    up,
                }
            })
            .collect::<Vec<_>>();
        let named = list.iter().any(|t| t.portal.is_some());
        Self {
            list,
            header: header.filter(|_| named),
            holders: Mutex::new(Holders::default()),
        }
    }

    /// The targets, in configured order.
    pub fn iter(&self) -> impl Iterator<Item = &Target> {
        self.list.iter()
    }

    /// The portal header to send a read of `document` with, if gstgate knows its holder
    /// and the caller did not name a portal itself.
    pub fn portal_for(&self, document: Option<&str>) -> Option<(HeaderName, HeaderValue)> {
        let header = self.header.as_ref()?;
        let index = *self
            .holders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_document
            .get(document?.to_ascii_lowercase().as_str())?;
        let portal = self.list.get(index)?.portal.clone()?;
        Some((header.clone(), portal))
    }

    /// The index of the target labelled `label`.
    pub fn position(&self, label: &str) -> Option<usize> {
        self.list.iter().position(|t| &*t.label == label)
    }

    /// The portal header naming the target labelled `label`, if the targets have portal
    /// names.
    pub fn portal_of(&self, label: &str) -> Option<(HeaderName, HeaderValue)> {
        let header = self.header.as_ref()?;
        let portal = self.list.get(self.position(label)?)?.portal.clone()?;
        Some((header.clone(), portal))
    }

    /// Whether any target is an IRP named by an `irp` value (holders are worth remembering).
    pub fn has_portals(&self) -> bool {
        self.list.iter().any(|t| t.portal.is_some())
    }

    /// The labels of the targets with a portal name, in configured order with `first`
    /// moved first (when it is one of them).
    pub fn portals(&self, first: Option<&str>) -> Vec<Arc<str>> {
        let named = self.list.iter().filter(|t| t.portal.is_some());
        let (mut head, tail): (Vec<_>, Vec<_>) = named
            .map(|t| t.label.clone())
            .partition(|label| Some(&**label) == first);
        head.extend(tail);
        head
    }

    /// Whether a request carries the portal header at all (the caller's own is passed on as
    /// sent, a value NIC refuses included).
    pub fn carries_portal(&self, headers: &http::HeaderMap) -> bool {
        self.header
            .as_ref()
            .is_some_and(|h| headers.contains_key(h))
    }

    /// The portal a request names in the portal header (the caller's, or the one
    /// [`Targets::portal_for`] added): its holder goes first.
    pub fn named_in(&self, headers: &http::HeaderMap) -> Option<usize> {
        let value = headers.get(self.header.as_ref()?)?;
        self.list
            .iter()
            .position(|t| t.portal.as_ref() == Some(value))
    }

    /// The targets in the order a request tries them: as configured, with a document's
    /// holder moved first or a target that just failed the request moved last.
    pub fn ordered(&self, order: Order) -> impl Iterator<Item = &Target> {
        let (first, last) = match order {
            Order::Configured => (None, None),
            Order::First(i) => (Some(i), None),
            Order::Last(i) => (None, Some(i)),
        };
        let moved = move |i: usize| Some(i) == first || Some(i) == last;
        first
            .and_then(|i| self.list.get(i))
            .into_iter()
            .chain(
                self.list
                    .iter()
                    .enumerate()
                    .filter(move |(i, _)| !moved(*i))
                    .map(|(_, t)| t),
            )
            .chain(last.and_then(|i| self.list.get(i)))
    }

    /// Remembers that the target labelled `label` generated `document`, forgetting the
    /// oldest beyond [`MAX_HOLDERS`]. Only worth it when the targets have portal names.
    pub fn remember(&self, document: &str, label: &str) {
        if self.header.is_none() {
            return;
        }
        let Some(index) = self.position(label) else {
            return;
        };
        // NIC's IRNs are hex, which callers may write in either case.
        let document: Box<str> = document.to_ascii_lowercase().into();
        let mut holders = self.holders.lock().unwrap_or_else(|p| p.into_inner());
        if holders
            .by_document
            .insert(document.clone(), index)
            .is_none()
        {
            holders.order.push_back(document);
            while holders.order.len() > MAX_HOLDERS {
                if let Some(old) = holders.order.pop_front() {
                    holders.by_document.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn two_irps() -> Targets {
        let (metrics, _) = Metrics::new();
        Targets::new(
            "einv",
            vec![
                (
                    Base::parse("http://irp1").unwrap(),
                    Some(HeaderValue::from_static("NIC1")),
                ),
                (
                    Base::parse("http://irp2").unwrap(),
                    Some(HeaderValue::from_static("NIC2")),
                ),
            ],
            Some(HeaderName::from_static("irp")),
            (2, Duration::from_secs(30)),
            &metrics,
        )
    }

    fn labels(targets: &[&Target]) -> Vec<String> {
        targets.iter().map(|t| t.label.to_string()).collect()
    }

    /// The targets that would take an attempt now, in `order`.
    fn admitted(t: &Targets, order: Order) -> Vec<String> {
        let ordered = t.ordered(order).collect::<Vec<_>>();
        let open: Vec<&Target> = ordered
            .into_iter()
            .filter(|target| target.admit().is_some())
            .collect();
        labels(&open)
    }

    #[tokio::test(start_paused = true)]
    async fn the_primary_goes_first_and_an_open_one_is_skipped() {
        let t = two_irps();
        assert_eq!(admitted(&t, Order::Configured), ["NIC1", "NIC2"]);
        for _ in 0..2 {
            t.ordered(Order::Configured).collect::<Vec<_>>()[0]
                .admit()
                .expect("closed")
                .judge(Health::Unreached);
        }
        assert_eq!(admitted(&t, Order::Configured), ["NIC2"]);
        assert_eq!(t.iter().next().map(Target::state), Some(State::Open));
    }

    #[tokio::test(start_paused = true)]
    async fn a_forced_attempt_on_an_open_target_counts_without_closing_it() {
        let t = two_irps();
        let nic1 = t.ordered(Order::Configured).collect::<Vec<_>>()[0];
        for _ in 0..2 {
            nic1.admit().expect("closed").judge(Health::Failed);
        }
        nic1.force().judge(Health::Answered);
        assert_eq!(nic1.state(), State::Open);
        assert_eq!(nic1.up.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_of_a_remembered_document_goes_to_its_holder_with_its_portal_header() {
        let t = two_irps();
        t.remember("irn-a", "NIC2");
        let (name, value) = t.portal_for(Some("irn-a")).expect("a holder");
        assert_eq!((name.as_str(), value.to_str().ok()), ("irp", Some("NIC2")));
        let mut headers = http::HeaderMap::new();
        headers.insert(name, value);
        let first = t.named_in(&headers).expect("NIC2 is a target");
        assert_eq!(
            labels(&t.ordered(Order::First(first)).collect::<Vec<_>>()),
            ["NIC2", "NIC1"]
        );
        assert_eq!(
            labels(&t.ordered(Order::Last(0)).collect::<Vec<_>>()),
            ["NIC2", "NIC1"]
        );
        assert_eq!(
            t.portal_of("NIC1").map(|(_, v)| v),
            Some(HeaderValue::from_static("NIC1"))
        );
        assert!(t.portal_for(Some("irn-b")).is_none());
        assert_eq!(t.portals(Some("NIC2")), [Arc::from("NIC2"), "NIC1".into()]);
        assert_eq!(t.portals(Some("NIC9")), [Arc::from("NIC1"), "NIC2".into()]);
    }

    #[tokio::test(start_paused = true)]
    async fn holders_are_bounded_and_the_oldest_forgotten() {
        let t = two_irps();
        for i in 0..=MAX_HOLDERS {
            t.remember(&format!("irn-{i}"), "NIC1");
        }
        assert!(t.portal_for(Some("irn-0")).is_none());
        assert!(t.portal_for(Some(&format!("irn-{MAX_HOLDERS}"))).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_unnamed_target_is_labelled_default_and_adds_no_header() {
        let (metrics, _) = Metrics::new();
        let t = Targets::new(
            "ewb",
            vec![(Base::parse("http://ewb").unwrap(), None)],
            None,
            (5, Duration::from_secs(30)),
            &metrics,
        );
        t.remember("doc", DEFAULT_TARGET);
        assert!(t.portal_for(Some("doc")).is_none());
        assert!(t.portals(Some(DEFAULT_TARGET)).is_empty());
        assert_eq!(
            labels(&t.ordered(Order::Configured).collect::<Vec<_>>()),
            [DEFAULT_TARGET]
        );
    }
}
