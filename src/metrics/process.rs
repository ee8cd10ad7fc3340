//! The standard `process_*` metrics (CPU, memory, file descriptors, start time), read from
//! `/proc/self` when Prometheus scrapes; on systems without `/proc` nothing is reported. And,
//! only with `serve --heap-metric`, `gstgate_heap_allocated_bytes` from the allocator.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// `/proc` reports CPU times and start times in USER_HZ ticks, 100 per second on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// Scrape-time collector of the process metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessMetrics;

/// One reading of `/proc/self`.
struct Reading {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    open_fds: f64,
    max_fds: Option<f64>,
    start_time_seconds: Option<f64>,
}

fn read() -> Option<Reading> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: the fields after it start past its `)`.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): field n is fields[n - 3].
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let cpu_seconds = (field(14)? + field(15)?) / TICKS_PER_SECOND;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v * 1024.0)
    };
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<f64>().ok())
        });
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    let start_time_seconds = boot
        .zip(field(22))
        .map(|(boot, ticks)| boot + ticks / TICKS_PER_SECOND)
        .filter(|t| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(f64::MAX, |d| d.as_secs_f64());
            *t <= now
        });
    Some(Reading {
        cpu_seconds,
        resident_bytes: kib("VmRSS:")?,
        virtual_bytes: kib("VmSize:")?,
        open_fds,
        max_fds,
        start_time_seconds,
    })
}

impl Collector for ProcessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(r) = read() else {
            return Ok(());
        };
        let counter = encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(r.cpu_seconds).encode(counter)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                Some(r.resident_bytes),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                Some(r.virtual_bytes),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                Some(r.open_fds),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                r.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                r.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(value).encode(gauge)?;
            }
        }
        Ok(())
    }
}

/// Scrape-time collector of `gstgate_heap_allocated_bytes`, registered only on request
/// (`serve --heap-metric`): glibc counts its in-use bytes by walking every arena's free lists
/// under that arena's lock while every allocation in that arena waits (50–70 ms on a test
/// heap with 470,000 free chunks).
#[derive(Debug, Clone, Copy, Default)]
pub struct HeapMetric;

impl Collector for HeapMetric {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(bytes) = crate::heap::allocated() else {
            return Ok(());
        };
        let gauge = encoder.encode_descriptor(
            "gstgate_heap_allocated_bytes",
            "Heap bytes in use (allocated and not freed), without the free memory the allocator keeps",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(bytes as f64).encode(gauge)
    }
}
