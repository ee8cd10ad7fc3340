//! The Redis backend: the store replicas share. Sealed records under `<prefix>:session:<name>`,
//! the login lease under `<prefix>:lease:<name>`, and records' new revisions announced on the
//! channel `<prefix>:revisions`. Idempotency records under `<prefix>:idem:<name>` (with Redis
//! expiring them) and indexed by expiry in the sorted set `<prefix>:idem-index`, which counts
//! them against `idempotency.max_keys`.
//!
//! One multiplexed connection, made lazily and made again after an I/O error, so that a
//! gateway starts and serves while Redis is down. While it is down, attempts to connect are
//! spaced by [`RECONNECT_GAP`]: every operation in between fails at once instead of waiting
//! for a connect timeout on the request path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};
use tokio::sync::{mpsc, Mutex};

use super::backend::{
    BackendError, Coordination, Event, KeySwap, Lease, Pending, Records, Rows, Swapped,
};
use super::memory::millis;
use crate::tasks::Tasks;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may take before the connection is presumed dead.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed connection attempt, none is made for this long.
const RECONNECT_GAP: Duration = Duration::from_millis(500);
/// Keys read per `MGET` at start-up.
const READ_BATCH: usize = 500;

/// Deletes the lease only if this holder still has it.
const RELEASE: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
/// Extends the lease only if this holder still has it.
const EXTEND: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";

/// A [`KeySwap`], atomic as every script is. KEYS: the record, the index. ARGV: expected
/// (empty: none; a sealed value never is), new (empty: delete), ttl ms, now ms, limit, the
/// record's name. Returns 1 done, 0 changed, 2 full.
const SWAP_KEY: &str = r"
local current = redis.call('GET', KEYS[1])
if current == false then current = '' end
if current ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[6])
  return 1
end
if ARGV[1] == '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 2 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]) + tonumber(ARGV[3]), ARGV[6])
return 1
";

/// The Redis connection and key layout.
pub struct Redis {
    client: Client,
    prefix: String,
    conn: Mutex<Link>,
    /// Shared with the subscription's task.
    up: Arc<AtomicBool>,
}

#[derive(Default)]
struct Link {
    conn: Option<MultiplexedConnection>,
    last_attempt: Option<Instant>,
}

impl Redis {
    /// A client for `url` (`redis://` or `rediss://`), trusting `ca_pem` for TLS if given.
    /// Makes no connection yet.
    pub fn new(url: &str, ca_pem: Option<Vec<u8>>, prefix: &str) -> Result<Self, RedisError> {
        let client = match ca_pem {
            Some(root_cert) => Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )?,
            None => Client::open(url)?,
        };
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
            conn: Mutex::new(Link::default()),
            up: Arc::new(AtomicBool::new(false)),
        })
    }

    fn record_key(&self, name: &str) -> String {
        session_key(&self.prefix, name)
    }

    fn channel(&self) -> String {
        format!("{}:revisions", self.prefix)
    }

    async fn connection(&self) -> Result<MultiplexedConnection, BackendError> {
        let mut link = self.conn.lock().await;
        if let Some(c) = &link.conn {
            return Ok(c.clone());
        }
        if link
            .last_attempt
            .is_some_and(|t| t.elapsed() < RECONNECT_GAP)
        {
            return Err(BackendError::Unreachable("not connected".into()));
        }
        link.last_attempt = Some(Instant::now());
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT);
        match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(c) => {
                link.conn = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                self.up.store(false, Ordering::Relaxed);
                Err(BackendError::Unreachable(e.to_string()))
            }
        }
    }

    /// Runs `cmd` and sorts its error: a broken connection is dropped for a new one.
    async fn run<T: redis::FromRedisValue>(&self, op: Op) -> Result<T, BackendError> {
        let mut conn = self.connection().await?;
        let result = match op {
            Op::Cmd(cmd) => cmd.query_async(&mut conn).await,
            Op::Pipe(pipe) => pipe.query_async(&mut conn).await,
        };
        match result {
            Ok(v) => {
                self.up.store(true, Ordering::Relaxed);
                Ok(v)
            }
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                self.up.store(false, Ordering::Relaxed);
                self.conn.lock().await.conn = None;
                Err(BackendError::Unreachable(e.to_string()))
            }
            Err(e) => Err(BackendError::Failed(e.to_string())),
        }
    }

    fn episodes_key(&self) -> String {
        format!("{}:alert-episodes", self.prefix)
    }

    /// The group's open alert episodes.
    async fn episodes(&self) -> Result<Vec<String>, BackendError> {
        self.run(Op::Cmd(
            redis::cmd("SMEMBERS").arg(self.episodes_key()).clone(),
        ))
        .await
    }

    /// Opens (`true`) or closes an alert episode for the group; returns whether this call
    /// changed it (opened it first, or closed it).
    async fn set_episode(&self, key: &str, open: bool) -> Result<bool, BackendError> {
        let cmd = if open { "SADD" } else { "SREM" };
        let n: i64 = self
            .run(Op::Cmd(
                redis::cmd(cmd).arg(self.episodes_key()).arg(key).clone(),
            ))
            .await?;
        Ok(n == 1)
    }

    /// Checks that Redis answers.
    async fn ping(&self) -> Result<(), BackendError> {
        let _: String = self.run(Op::Cmd(redis::cmd("PING"))).await?;
        Ok(())
    }

    /// Every record: `(name, sealed bytes)`.
    async fn scan(&self) -> Result<Vec<(String, Vec<u8>)>, BackendError> {
        let pattern = format!("{}:session:*", self.prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .run(Op::Cmd(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .clone(),
                ))
                .await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        keys.sort();
        keys.dedup();
        let strip = format!("{}:session:", self.prefix);
        let mut rows = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(READ_BATCH) {
            let values: Vec<Option<Vec<u8>>> = self
                .run(Op::Cmd(redis::cmd("MGET").arg(chunk).clone()))
                .await?;
            for (key, value) in chunk.iter().zip(values) {
                if let (Some(name), Some(value)) = (key.strip_prefix(&strip), value) {
                    rows.push((name.to_owned(), value));
                }
            }
        }
        Ok(rows)
    }

    /// One record's sealed bytes.
    async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.run(Op::Cmd(
            redis::cmd("GET").arg(self.record_key(name)).clone(),
        ))
        .await
    }

    /// Writes (`Some`) or deletes (`None`) records, in one pipeline.
    async fn commit(&self, rows: &[(String, Option<Vec<u8>>)]) -> Result<(), BackendError> {
        let mut pipe = redis::pipe();
        for (name, value) in rows {
            match value {
                Some(v) => pipe.cmd("SET").arg(self.record_key(name)).arg(v).ignore(),
                None => pipe.cmd("DEL").arg(self.record_key(name)).ignore(),
            };
        }
        self.run(Op::Pipe(pipe)).await
    }

    fn key_key(&self, name: &str) -> String {
        format!("{}:idem:{name}", self.prefix)
    }

    /// Idempotency record `name`'s sealed bytes; Redis drops expired ones itself.
    async fn get_key(&self, name: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.run(Op::Cmd(redis::cmd("GET").arg(self.key_key(name)).clone()))
            .await
    }

    /// A [`KeySwap`] as one script.
    async fn swap_key(&self, swap: KeySwap) -> Result<Swapped, BackendError> {
        let n: i64 = self
            .run(Op::Cmd(
                redis::cmd("EVAL")
                    .arg(SWAP_KEY)
                    .arg(2)
                    .arg(self.key_key(&swap.name))
                    .arg(format!("{}:idem-index", self.prefix))
                    .arg(swap.expected.unwrap_or_default())
                    .arg(swap.new.unwrap_or_default())
                    .arg(millis(swap.ttl).max(1))
                    .arg(swap.now_ms)
                    .arg(swap.limit)
                    .arg(&swap.name)
                    .clone(),
            ))
            .await?;
        Ok(match n {
            1 => Swapped::Done,
            2 => Swapped::Full,
            _ => Swapped::Changed,
        })
    }

    /// Takes record `name`'s login lease for `ttl`, if no replica holds it.
    async fn lease(&self, name: &str, ttl: Duration) -> Result<Option<Lease>, BackendError> {
        let key = format!("{}:lease:{name}", self.prefix);
        let owner = owner_id();
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = self
            .run(Op::Cmd(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .clone(),
            ))
            .await?;
        Ok(set.map(|_| Lease { key, owner }))
    }

    /// Extends a held lease to `ttl` from now; false if it was lost (it expired).
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool, BackendError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let n: i64 = self
            .run(Op::Cmd(eval(EXTEND, lease).arg(ms).clone()))
            .await?;
        Ok(n == 1)
    }

    /// Releases a lease this holder still has.
    async fn release(&self, lease: &Lease) -> Result<(), BackendError> {
        let _: i64 = self.run(Op::Cmd(eval(RELEASE, lease))).await?;
        Ok(())
    }

    /// Announces that record `name`'s lease is free and the record at `revision`.
    async fn announce(&self, name: &str, revision: u64) -> Result<(), BackendError> {
        let message = format!("{revision} {name}");
        let _: i64 = self
            .run(Op::Cmd(
                redis::cmd("PUBLISH")
                    .arg(self.channel())
                    .arg(message)
                    .clone(),
            ))
            .await?;
        Ok(())
    }
}

impl Records for Redis {
    fn scan(&self) -> Pending<'_, Result<Rows, BackendError>> {
        Box::pin(Redis::scan(self))
    }

    fn get_key<'a>(
        &'a self,
        name: &'a str,
        _now_ms: u64,
    ) -> Pending<'a, Result<Option<Vec<u8>>, BackendError>> {
        Box::pin(Redis::get_key(self, name))
    }

    fn swap_key(&self, swap: KeySwap) -> Pending<'_, Result<Swapped, BackendError>> {
        Box::pin(Redis::swap_key(self, swap))
    }

    fn get<'a>(&'a self, name: &'a str) -> Pending<'a, Result<Option<Vec<u8>>, BackendError>> {
        Box::pin(Redis::get(self, name))
    }

    fn commit(
        &self,
        rows: Vec<(String, Option<Vec<u8>>)>,
    ) -> Pending<'_, Result<(), BackendError>> {
        Box::pin(async move { Redis::commit(self, &rows).await })
    }

    fn episodes(&self) -> Pending<'_, Result<Vec<String>, BackendError>> {
        Box::pin(Redis::episodes(self))
    }

    fn set_episode<'a>(
        &'a self,
        key: &'a str,
        open: bool,
    ) -> Pending<'a, Result<bool, BackendError>> {
        Box::pin(Redis::set_episode(self, key, open))
    }
}

impl Coordination for Redis {
    fn lease<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
    ) -> Pending<'a, Result<Option<Lease>, BackendError>> {
        Box::pin(Redis::lease(self, name, ttl))
    }

    fn extend<'a>(
        &'a self,
        lease: &'a Lease,
        ttl: Duration,
    ) -> Pending<'a, Result<bool, BackendError>> {
        Box::pin(Redis::extend(self, lease, ttl))
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> Pending<'a, Result<(), BackendError>> {
        Box::pin(Redis::release(self, lease))
    }

    fn announce<'a>(
        &'a self,
        name: &'a str,
        revision: u64,
    ) -> Pending<'a, Result<(), BackendError>> {
        Box::pin(Redis::announce(self, name, revision))
    }

    /// Subscribes to the revisions channel in a task of its own on `tasks`, which subscribes
    /// again whenever the connection breaks, until shutdown; what it sees arrives on the
    /// returned channel, which closes when the task ends.
    fn subscribe(&self, tasks: &Tasks) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (client, channel, up) = (self.client.clone(), self.channel(), self.up.clone());
        tasks.spawn_until_shutdown(async move {
            let mut first = true;
            loop {
                match listen(&client, &channel, &up, &tx, first).await {
                    Ok(()) => return,
                    Err(e) => {
                        up.store(false, Ordering::Relaxed);
                        tracing::warn!(error = %e, "redis subscription lost; resubscribing");
                    }
                }
                first = false;
                let jitter = RECONNECT_GAP.mul_f64(rand::random::<f64>());
                tokio::time::sleep(RECONNECT_GAP + jitter).await;
            }
        });
        rx
    }

    fn ping(&self) -> Pending<'_, Result<(), BackendError>> {
        Box::pin(Redis::ping(self))
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

/// One subscription to `channel`, until it breaks (`Err`) or nobody listens any more (`Ok`).
async fn listen(
    client: &Client,
    channel: &str,
    up: &AtomicBool,
    tx: &mpsc::UnboundedSender<Event>,
    first: bool,
) -> Result<(), String> {
    use futures_util::StreamExt as _;
    let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    pubsub.subscribe(channel).await.map_err(|e| e.to_string())?;
    up.store(true, Ordering::Relaxed);
    if !first {
        tracing::info!("redis subscription re-established");
        if tx.send(Event::Reconnected).is_err() {
            return Ok(());
        }
    }
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        let Ok(text) = msg.get_payload::<String>() else {
            continue;
        };
        let Some((revision, name)) = text.split_once(' ') else {
            continue;
        };
        let Ok(revision) = revision.parse() else {
            continue;
        };
        let event = Event::Revision {
            name: name.to_owned(),
            revision,
        };
        if tx.send(event).is_err() {
            return Ok(());
        }
    }
    Err("the subscription connection closed".into())
}

/// `EVAL script 1 <lease key> <owner>`: the lease scripts' common head.
fn eval(script: &str, lease: &Lease) -> redis::Cmd {
    redis::cmd("EVAL")
        .arg(script)
        .arg(1)
        .arg(&lease.key)
        .arg(&lease.owner)
        .clone()
}

/// The Redis key of record `name` under `prefix`.
pub(super) fn session_key(prefix: &str, name: &str) -> String {
    format!("{prefix}:session:{name}")
}

/// A lease holder's identity: random, so that only the holder can extend or release it.
fn owner_id() -> String {
    use rand::RngCore as _;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One round trip: a command or a pipeline.
enum Op {
    Cmd(redis::Cmd),
    Pipe(redis::Pipeline),
}
