//! The decision log: one JSON line per decided request.
//!
//! A line is written straight into bytes on the request path ([`Line`]: no intermediate record,
//! map or strings), appended to a shared batch and written by a dedicated thread, so the request
//! path never blocks on I/O. The writer wakes when a batch fills (64 KiB) or every 100 ms, writes
//! the batch in one call and flushes: like nginx's `access_log ... buffer=64k flush=...`, a crash
//! loses at most the last 100 ms. If the writer falls behind by more than 8 MiB, lines are dropped
//! and counted. The most recent lines are also kept in a bounded ring for the admin API, which
//! reads them back as [`DecisionRecord`]s.

use std::collections::VecDeque;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use palisade_config::DecisionLogTarget;

/// One decision record, as the admin API shows it (parsed back from its log line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// RFC 3339 time.
    pub time: String,
    /// Request id (also sent to the upstream and the client as `x-request-id`).
    pub request_id: String,
    /// Client IP.
    pub client_ip: String,
    /// Method.
    pub method: String,
    /// Path (without query).
    pub path: String,
    /// Route name.
    pub route: String,
    /// Response status.
    pub status: u16,
    /// Milliseconds from arrival to response headers.
    pub latency_ms: f64,
    /// Identity dimensions and values.
    pub identity: serde_json::Map<String, serde_json::Value>,
    /// Logged action (`would_<action>` when shadowed).
    pub action: String,
    /// Risk score.
    pub score: u8,
    /// Rule that chose the action.
    pub rule: String,
    /// Every signal: name, weight, shadow.
    pub reasons: Vec<Reason>,
    /// Whether the logged action was shadowed.
    pub shadow: bool,
    /// Limiter states.
    pub limits: Vec<LimitRecord>,
}

/// A signal in the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reason {
    /// Signal name.
    pub signal: String,
    /// Weight.
    pub weight: u8,
    /// Shadowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// An anonymous client's habit seen on a verified key or token: shown, not scored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discounted: bool,
}

/// A limit's verdict in the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitRecord {
    /// Limit name.
    pub limit: String,
    /// Allowed.
    pub allowed: bool,
    /// Remaining.
    pub remaining: u64,
    /// Seconds to reset.
    pub reset: u64,
}

/// A JSON line under construction: the writer of the decision log's fields. Keys are the
/// caller's constants; every value string is escaped.
#[derive(Debug, Default)]
pub struct Line {
    buf: Vec<u8>,
    /// Whether the next member or element needs a comma first.
    comma: bool,
}

impl Line {
    /// An empty line with room for a typical record.
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(1024),
            comma: false,
        }
    }

    /// The bytes so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Appends raw JSON (a fragment another [`Line`] wrote), taken as a value or members.
    #[inline(always)]
    pub fn raw(&mut self, json: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(json);
        self.comma = true;
        self
    }

    /// Opens an object (`{`), as a value or the whole line.
    #[inline(always)]
    pub fn open(&mut self) -> &mut Self {
        self.buf.push(b'{');
        self.comma = false;
        self
    }

    /// Closes an object.
    #[inline(always)]
    pub fn close(&mut self) -> &mut Self {
        self.buf.push(b'}');
        self.comma = true;
        self
    }

    /// Opens an array.
    #[inline(always)]
    pub fn open_array(&mut self) -> &mut Self {
        self.buf.push(b'[');
        self.comma = false;
        self
    }

    /// Closes an array.
    #[inline(always)]
    pub fn close_array(&mut self) -> &mut Self {
        self.buf.push(b']');
        self.comma = true;
        self
    }

    /// An array element separator, where one is due (before an element that is an object).
    #[inline(always)]
    pub fn element(&mut self) -> &mut Self {
        if self.comma {
            self.buf.push(b',');
        }
        self.comma = false;
        self
    }

    /// A member's key (escaped: keys may carry configured names such as `header:x-tenant`).
    #[inline(always)]
    pub fn key(&mut self, k: &str) -> &mut Self {
        if self.comma {
            self.buf.push(b',');
        }
        escape_into(&mut self.buf, k.as_bytes());
        self.buf.push(b':');
        self.comma = false;
        self
    }

    /// A member's key that is a constant of ours (letters, digits, `_`, `/`, `:`, `-`): written
    /// as it is.
    #[inline(always)]
    pub fn k(&mut self, k: &'static str) -> &mut Self {
        debug_assert!(!needs_escape(k.as_bytes()), "{k}");
        if self.comma {
            self.buf.push(b',');
        }
        self.buf.push(b'"');
        self.buf.extend_from_slice(k.as_bytes());
        self.buf.extend_from_slice(b"\":");
        self.comma = false;
        self
    }

    /// A string value.
    #[inline(always)]
    pub fn str(&mut self, v: &str) -> &mut Self {
        escape_into(&mut self.buf, v.as_bytes());
        self.comma = true;
        self
    }

    /// A string value from bytes: invalid UTF-8 is replaced, as `from_utf8_lossy` does.
    #[inline(always)]
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        match std::str::from_utf8(v) {
            Ok(_) => escape_into(&mut self.buf, v),
            Err(_) => escape_into(&mut self.buf, String::from_utf8_lossy(v).as_bytes()),
        }
        self.comma = true;
        self
    }

    /// An unsigned number.
    #[inline(always)]
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        self.comma = true;
        self
    }

    /// A boolean.
    #[inline(always)]
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.buf
            .extend_from_slice(if v { b"true" } else { b"false" });
        self.comma = true;
        self
    }

    /// Nanoseconds as milliseconds with six decimals (`3.785306`).
    pub fn millis(&mut self, nanos: u64) -> &mut Self {
        let mut b = itoa::Buffer::new();
        self.buf
            .extend_from_slice(b.format(nanos / 1_000_000).as_bytes());
        self.buf.push(b'.');
        let frac = nanos % 1_000_000;
        let digits = b.format(frac).as_bytes();
        self.buf
            .extend(std::iter::repeat_n(b'0', 6 - digits.len().min(6)));
        self.buf.extend_from_slice(digits);
        self.comma = true;
        self
    }

    /// An address as a string.
    #[inline(always)]
    pub fn ip(&mut self, ip: IpAddr) -> &mut Self {
        self.buf.push(b'"');
        write_ip(&mut self.buf, ip);
        self.buf.push(b'"');
        self.comma = true;
        self
    }

    /// A network (`203.0.113.0/24`) as a string.
    pub fn net(&mut self, ip: IpAddr, len: u8) -> &mut Self {
        self.buf.push(b'"');
        write_ip(&mut self.buf, ip);
        self.buf.push(b'/');
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
        self.buf.push(b'"');
        self.comma = true;
        self
    }

    /// RFC 3339 UTC time with milliseconds, from Unix milliseconds, as a string.
    #[inline(always)]
    pub fn time(&mut self, unix_ms: u64) -> &mut Self {
        self.buf.push(b'"');
        write_rfc3339(&mut self.buf, unix_ms);
        self.buf.push(b'"');
        self.comma = true;
        self
    }

    /// Ends the line: its bytes.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Whether any byte of `v` must be escaped in a JSON string (a control, `"` or `\`), eight
/// bytes at a time.
#[inline]
fn needs_escape(v: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Bytes of `x` that are zero (exact as an "any" test: a borrow only follows a true zero).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let w = u64::from_ne_bytes(w);
        // Below 0x20 (bytes of 0x80 and over have their high bit set and cannot match).
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
        if control | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// `v` as a JSON string: copied whole when nothing needs escaping (the common case), else in
/// runs between escapes.
#[inline(always)]
fn escape_into(out: &mut Vec<u8>, v: &[u8]) {
    if needs_escape(v) {
        escape_slow(out, v);
    } else {
        out.reserve(v.len() + 2);
        out.push(b'"');
        out.extend_from_slice(v);
        out.push(b'"');
    }
}

/// [`escape_into`] for a value with something to escape.
#[cold]
fn escape_slow(out: &mut Vec<u8>, v: &[u8]) {
    out.reserve(v.len() + 8);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in v.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(v.get(start..i).unwrap_or_default());
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0'));
                out.push(HEX.get(usize::from(b & 15)).copied().unwrap_or(b'0'));
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(v.get(start..).unwrap_or_default());
    out.push(b'"');
}

fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    // Composed on the stack and appended once (a request logs up to three addresses; pushed
    // digit by digit, each would cost a capacity check).
    out.extend_from_slice(crate::wire::ip_text::IpText::new(ip).as_bytes());
}

fn write_rfc3339(out: &mut Vec<u8>, unix_ms: u64) {
    use std::cell::Cell;
    // `YYYY-MM-DDTHH:MM:SS.` changes once a second: kept per thread, so that a busy second
    // composes it once, not once a line.
    thread_local! {
        static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
    }
    let secs = unix_ms / 1000;
    let head = SECOND.with(|c| {
        let (at, head) = c.get();
        if at == secs {
            return head;
        }
        let head = second_text(secs);
        c.set((secs, head));
        head
    });
    let ms = unix_ms % 1000;
    out.extend_from_slice(&head);
    out.extend_from_slice(&[
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
}

/// `YYYY-MM-DDTHH:MM:SS.` (UTC) for Unix seconds.
fn second_text(secs: u64) -> [u8; 20] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, mo, d) = palisade_keys::time::civil_from_days(days);
    let y = y.clamp(0, 9999) as u64;
    let two = |n: u64| [b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8];
    let [y1, y2] = two(y / 100);
    let [y3, y4] = two(y % 100);
    let [mo1, mo2] = two(u64::from(mo));
    let [d1, d2] = two(u64::from(d));
    let [h1, h2] = two(rem / 3600);
    let [mi1, mi2] = two(rem % 3600 / 60);
    let [s1, s2] = two(rem % 60);
    [
        y1, y2, y3, y4, b'-', mo1, mo2, b'-', d1, d2, b'T', h1, h2, b':', mi1, mi2, b':', s1, s2,
        b'.',
    ]
}

/// A batch fills to this before the writer is woken early.
const BATCH: usize = 64 << 10;
/// The writer wakes at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Queued bytes beyond this are dropped (the writer fell behind).
const MAX_QUEUED: usize = 8 << 20;

/// Lines waiting for the writer.
#[derive(Debug, Default)]
struct Batch {
    bytes: Vec<u8>,
    closed: bool,
}

#[derive(Debug, Default)]
struct Queue {
    batch: Mutex<Batch>,
    wake: Condvar,
    /// The writer is asleep waiting for a full batch (so a full one should wake it).
    waiting: AtomicBool,
}

/// The decision log and the recent-decisions ring.
#[derive(Debug)]
pub struct DecisionLog {
    queue: Option<Arc<Queue>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    recent: Mutex<VecDeque<Arc<[u8]>>>,
    recent_cap: usize,
    /// Every logged line, for the dashboard's live stream (sent only while someone listens;
    /// a listener that falls behind skips lines).
    live: tokio::sync::broadcast::Sender<Arc<[u8]>>,
}

impl DecisionLog {
    /// Starts the writer thread for `target`.
    pub fn start(target: &DecisionLogTarget, recent_cap: usize) -> std::io::Result<Self> {
        let out: Option<Box<dyn Write + Send>> = match target {
            DecisionLogTarget::Off => None,
            DecisionLogTarget::Stdout => Some(Box::new(std::io::stdout())),
            DecisionLogTarget::File(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?;
                Some(Box::new(f))
            }
        };
        let (queue, writer) = match out {
            Some(out) => {
                let queue = Arc::new(Queue::default());
                let q = queue.clone();
                let handle = std::thread::Builder::new()
                    .name("palisade-decision-log".to_owned())
                    .spawn(move || write_batches(&q, out))?;
                (Some(queue), Some(handle))
            }
            None => (None, None),
        };
        Ok(Self {
            queue,
            writer: Mutex::new(writer),
            recent: Mutex::new(VecDeque::with_capacity(recent_cap.min(4096))),
            recent_cap,
            live: tokio::sync::broadcast::channel(1024).0,
        })
    }

    /// Records one line (a JSON object, without the newline): to the log target and into the
    /// recent ring. Returns false if it had to be dropped because the writer fell behind.
    pub fn record(&self, line: &[u8]) -> bool {
        let mut ok = true;
        if let Some(q) = &self.queue {
            let mut wake = false;
            match q.batch.lock() {
                Ok(mut b) if !b.closed && b.bytes.len() + line.len() < MAX_QUEUED => {
                    b.bytes.extend_from_slice(line);
                    b.bytes.push(b'\n');
                    wake = b.bytes.len() >= BATCH;
                }
                _ => ok = false,
            }
            if wake && q.waiting.swap(false, Ordering::AcqRel) {
                q.wake.notify_one();
            }
        }
        let live = self.live.receiver_count() > 0;
        if self.recent_cap == 0 && !live {
            return ok;
        }
        let shared: Arc<[u8]> = Arc::from(line);
        if live {
            let _ = self.live.send(shared.clone());
        }
        if self.recent_cap > 0
            && let Ok(mut ring) = self.recent.lock()
        {
            if ring.len() >= self.recent_cap {
                ring.pop_front();
            }
            ring.push_back(shared);
        }
        ok
    }

    /// Writes what is queued and waits for it to reach the target (at shutdown).
    pub fn close(&self) {
        if let Some(q) = &self.queue {
            if let Ok(mut b) = q.batch.lock() {
                b.closed = true;
            }
            q.wake.notify_one();
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// The most recent decisions, newest first, optionally filtered.
    /// Logged lines from now on, as they are written (the dashboard's live stream).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<[u8]>> {
        self.live.subscribe()
    }

    /// The lines kept for the admin API, oldest first.
    pub fn recent_lines(&self) -> Vec<Arc<[u8]>> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn recent(
        &self,
        limit: usize,
        filter: impl Fn(&DecisionRecord) -> bool,
    ) -> Vec<DecisionRecord> {
        // Shared handles, taken under the lock; parsed after it is released.
        let lines: Vec<Arc<[u8]>> = match self.recent.lock() {
            Ok(ring) => ring.iter().cloned().collect(),
            Err(_) => return Vec::new(),
        };
        lines
            .iter()
            .rev()
            .filter_map(|l| serde_json::from_slice::<DecisionRecord>(l).ok())
            .filter(|r| filter(r))
            .take(limit)
            .collect()
    }
}

impl Drop for DecisionLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread: takes the batch when it is full or every [`FLUSH_EVERY`], writes it in
/// one call and flushes.
fn write_batches(q: &Queue, mut out: Box<dyn Write + Send>) {
    let mut spare: Vec<u8> = Vec::with_capacity(BATCH * 2);
    loop {
        let closed = {
            let Ok(mut b) = q.batch.lock() else {
                return;
            };
            if b.bytes.len() < BATCH && !b.closed {
                q.waiting.store(true, Ordering::Release);
                b = match q.wake.wait_timeout(b, FLUSH_EVERY) {
                    Ok((b, _)) => b,
                    Err(_) => return,
                };
                q.waiting.store(false, Ordering::Release);
            }
            std::mem::swap(&mut b.bytes, &mut spare);
            b.closed
        };
        if !spare.is_empty() {
            let _ = out.write_all(&spare);
            let _ = out.flush();
            spare.clear();
            // A burst's big buffer is not kept for ever.
            spare.shrink_to(BATCH * 2);
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn rfc3339(unix_ms: u64) -> String {
        let mut out = Vec::new();
        write_rfc3339(&mut out, unix_ms);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn addresses_are_written_as_their_display_form() {
        let mut x: u32 = 0x9e37_79b9;
        let mut samples: Vec<IpAddr> = ["0.0.0.0", "255.255.255.255", "10.0.100.9", "1.22.103.4"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            samples.push(IpAddr::V4(x.into()));
        }
        samples.push("2001:db8::1".parse().unwrap());
        for ip in samples {
            let mut out = Vec::new();
            write_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29T12:34:56.789Z, a leap day.
        assert_eq!(rfc3339(951_827_696_789), "2000-02-29T12:34:56.789Z");
        // 2026-11-21T00:00:00Z.
        assert_eq!(rfc3339(1_795_219_200_000), "2026-11-21T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_219_200_007), "2026-11-21T00:00:00.007Z");
    }

    /// Against `httpdate`'s formatting of the same instants, in random order, two in each second
    /// (so the per-thread second is both missed and hit).
    #[test]
    fn rfc3339_agrees_with_httpdate() {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Up to the year 2200; the second instant is in the same second (the kept text)
            // unless its millisecond wraps.
            let secs = x % 7_258_118_400;
            let ms = (x >> 40) % 1000;
            for unix_ms in [secs * 1000 + ms, secs * 1000 + (ms + 1) % 1000] {
                let t = std::time::UNIX_EPOCH + Duration::from_millis(unix_ms);
                // "Sun, 06 Nov 1994 08:49:37 GMT"
                let h = httpdate::fmt_http_date(t);
                let f: Vec<&str> = h.split([' ', ',']).filter(|s| !s.is_empty()).collect();
                let month = MONTHS.iter().position(|m| *m == f[2]).unwrap() + 1;
                let want = format!(
                    "{}-{month:02}-{}T{}.{:03}Z",
                    f[3],
                    f[1],
                    f[4],
                    unix_ms % 1000
                );
                assert_eq!(rfc3339(unix_ms), want, "{unix_ms}");
            }
        }
    }

    /// Every line is valid JSON that serde_json reads back to the same values, whatever the
    /// strings hold (controls, quotes, backslashes, invalid UTF-8, non-ASCII).
    #[test]
    fn lines_are_json_and_read_back_exactly() {
        let hostile = "a\"b\\c\n\r\t\u{1}\u{1f}é😀 </script>";
        let mut l = Line::new();
        l.open()
            .key("time")
            .time(1_795_219_200_123)
            .key("path")
            .str(hostile)
            .key("bytes")
            .bytes(b"ok\xff\xfe")
            .key("header:x-\"odd\"")
            .str("v")
            .key("ip")
            .ip("2001:db8::1".parse().unwrap())
            .key("net")
            .net("203.0.113.0".parse().unwrap(), 24)
            .key("latency_ms")
            .millis(3_785_306)
            .key("small")
            .millis(42)
            .key("n")
            .u64(u64::MAX)
            .key("b")
            .bool(false)
            .key("list")
            .open_array();
        for i in 0..3 {
            l.element().open().key("i").u64(i).close();
        }
        l.close_array().close();
        let v: serde_json::Value = serde_json::from_slice(l.as_bytes()).unwrap();
        assert_eq!(v["time"], "2026-11-21T00:00:00.123Z");
        assert_eq!(v["path"], hostile);
        assert_eq!(v["bytes"], "ok\u{fffd}\u{fffd}");
        assert_eq!(v["header:x-\"odd\""], "v");
        assert_eq!(v["ip"], "2001:db8::1");
        assert_eq!(v["net"], "203.0.113.0/24");
        assert_eq!(v["latency_ms"].as_f64(), Some(3.785306));
        assert_eq!(v["small"].as_f64(), Some(0.000042));
        assert_eq!(v["n"].as_u64(), Some(u64::MAX));
        assert_eq!(v["b"], false);
        assert_eq!(v["list"][2]["i"], 2);
    }

    /// The eight-at-a-time test agrees with the byte-by-byte one on every byte at every
    /// position, and around every boundary.
    #[test]
    fn the_escape_test_misses_nothing() {
        let slow = |v: &[u8]| v.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        for b in 0..=255u8 {
            for len in 1..20 {
                for at in 0..len {
                    let mut v = vec![b'a'; len];
                    v[at] = b;
                    assert_eq!(needs_escape(&v), slow(&v), "byte {b:#x} at {at} of {len}");
                    let mut w = vec![0xc3u8; len];
                    w[at] = b;
                    assert_eq!(needs_escape(&w), slow(&w), "byte {b:#x} among 0xc3");
                }
            }
        }
    }

    /// Lines reach the file in order, whole, and all of them once the log is closed.
    #[test]
    fn every_line_reaches_the_file_in_order() {
        let p = std::env::temp_dir().join(format!("palisade-declog-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let log = DecisionLog::start(&DecisionLogTarget::File(p.clone()), 10).unwrap();
        for i in 0..20_000u64 {
            let mut l = Line::new();
            l.open()
                .key("i")
                .u64(i)
                .key("pad")
                .str(&"x".repeat((i % 50) as usize))
                .close();
            assert!(log.record(l.as_bytes()));
        }
        let recent = log.recent(100, |_| true);
        assert!(recent.is_empty(), "not decision records: filtered out");
        log.close();
        let text = std::fs::read_to_string(&p).unwrap();
        let got: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["i"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(got, (0..20_000).collect::<Vec<_>>());
        let _ = std::fs::remove_file(&p);
    }
}
