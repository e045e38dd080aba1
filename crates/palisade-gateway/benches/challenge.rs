//! What a challenge costs the gateway: sealing a puzzle (issue), opening a clearance (every
//! request that carries one), and checking a solution. `bench/challenge.sh` runs it.
#![allow(clippy::unwrap_used, reason = "bench")]

use palisade_gateway::challenge::token::{Pass, Puzzle, Sealer, solve, solves};

fn main() {
    divan::main();
}

fn puzzle() -> Puzzle {
    Puzzle {
        k: "p".into(),
        n: "9f1c2a7d5e3b4c6a8d0e1f2a3b4c5d6e".into(),
        b: 16,
        i: 1_800_000_000,
        e: 1_800_000_300,
        h: "815c70cd754e38bea98cf213ca2fb21c".into(),
        u: "/api/items?page=2".into(),
        m: "GET".into(),
        r: "items".into(),
        p: 14_772_386_467_666_730_998,
    }
}

#[divan::bench]
fn issue_puzzle(b: divan::Bencher) {
    let s = Sealer::new(&[7; 32]);
    let p = puzzle();
    b.bench_local(|| s.seal(divan::black_box(&p)).len());
}

#[divan::bench]
fn open_clearance(b: divan::Bencher) {
    let s = Sealer::new(&[7; 32]);
    let t = s.seal(&Pass {
        k: "c".into(),
        i: 1_800_000_000,
        e: 1_800_003_600,
        l: "pow".into(),
        h: "815c70cd754e38bea98cf213ca2fb21c".into(),
        p: 14_772_386_467_666_730_998,
        f: 0,
        z: None,
    });
    b.bench_local(|| s.open::<Pass>(divan::black_box(&t)).map(|p| p.e));
}

#[divan::bench]
fn check_solution(b: divan::Bencher) {
    let s = Sealer::new(&[7; 32]);
    let t = s.seal(&puzzle());
    let n = solve(&t, 16).to_string();
    b.bench_local(|| {
        s.open::<Puzzle>(divan::black_box(&t))
            .is_some_and(|p| solves(&t, &n, p.b))
    });
}
