// The fact store's map under a rollout's pod churn: 24,000 entries of the pod index's
// size (a 24-byte uid String and 120 bytes of facts), then 60,000 times one removed and
// a new uid inserted (a pod evicted, its replacement created). Prints the heap the map
// holds (live) and its peak, counted by a global allocator, and when a hash table's
// capacity jumps.  rustc -O --edition 2024 churn.rs && ./churn hash && ./churn btree
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let n = LIVE.fetch_add(l.size(), Relaxed) + l.size();
        PEAK.fetch_max(n, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static A: Counting = Counting;

type Facts = [u64; 15];
const PODS: usize = 24_000;
const CHURN: usize = 60_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uid(&mut self) -> String {
        let (a, b, c, d) = (self.next(), self.next(), self.next(), self.next());
        format!("{a:016x}-{:04x}-{:04x}-{:012x}", b & 0xffff, c & 0xffff, d & 0xffff_ffff_ffff)
    }
}

trait Map {
    fn put(&mut self, k: String);
    fn take(&mut self, k: &str);
    fn room(&self) -> Option<usize>;
}
impl Map for HashMap<String, Facts> {
    fn put(&mut self, k: String) { self.insert(k, [0; 15]); }
    fn take(&mut self, k: &str) { self.remove(k); }
    fn room(&self) -> Option<usize> { Some(self.capacity()) }
}
impl Map for BTreeMap<String, Facts> {
    fn put(&mut self, k: String) { self.insert(k, [0; 15]); }
    fn take(&mut self, k: &str) { self.remove(k); }
    fn room(&self) -> Option<usize> { None }
}

fn mb(n: usize) -> f64 { n as f64 / 1e6 }

fn run(kind: &str, mut m: impl Map) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut keys: Vec<String> = (0..PODS).map(|_| rng.uid()).collect();
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    for k in &keys { m.put(k.clone()); }
    println!("{kind}: {PODS} listed: live {:.2} MB, peak {:.2} MB", mb(LIVE.load(Relaxed) - base), mb(PEAK.load(Relaxed) - base));
    let mut room = m.room();
    for i in 0..CHURN {
        let j = (rng.next() as usize) % PODS;
        let k = rng.uid();
        m.take(&keys[j]);
        m.put(k.clone());
        keys[j] = k;
        if let (Some(was), Some(now)) = (room, m.room()) && now > was + PODS / 4 {
            println!("{kind}: after {} replacements the table grew: room for {was} -> {now} entries, live {:.2} MB", i + 1, mb(LIVE.load(Relaxed) - base));
        }
        room = m.room();
    }
    println!("{kind}: after {CHURN} replacements: live {:.2} MB, peak {:.2} MB", mb(LIVE.load(Relaxed) - base), mb(PEAK.load(Relaxed) - base));
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("hash") => run("HashMap", HashMap::new()),
        Some("btree") => run("BTreeMap", BTreeMap::new()),
        _ => eprintln!("usage: churn hash|btree"),
    }
}
