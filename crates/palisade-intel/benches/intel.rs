//! Client intelligence on the request path. Run: `cargo bench -p palisade-intel --bench intel`.

#![allow(clippy::unwrap_used, reason = "a benchmark's setup fails loudly")]

use palisade_intel::BotCatalog;

fn main() {
    divan::main();
}

const UAS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "python-requests/2.31.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
];

#[divan::bench(args = [0, 1, 2, 3])]
fn classify(bencher: divan::Bencher, i: usize) {
    let c = BotCatalog::builtin().unwrap();
    let ua = UAS.get(i).copied().unwrap_or_default();
    bencher.bench_local(|| c.classify(ua));
}
