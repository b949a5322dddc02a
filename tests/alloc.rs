//! The training hot loop allocates nothing once warmed up: counted by a
//! global allocator wrapped around the system one.

use plasticity::config;
use plasticity::data;
use plasticity::train::build_learner;
use rand::SeedableRng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn train_batch_and_evaluate_do_not_allocate() {
    let dir = tempfile::tempdir().unwrap();
    data::write_synthetic(dir.path(), 1200, 60, 28, 3);
    let splits = data::load(dir.path()).unwrap();
    for threads in [1, 2] {
        for nudging in [config::Nudging::RandomSign, config::Nudging::Symmetric] {
            let mut cfg = config::preset("eqprop-mnist-2h").unwrap();
            cfg.free_steps = 5;
            cfg.threads = threads;
            cfg.nudging = nudging;
            cfg.eval_block = 16;
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let counts = [splits.train.len(), splits.val.len(), splits.test.len()];
                let mut learner = build_learner(&cfg, counts).unwrap();
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
                let idx: Vec<usize> = (0..splits.train.len()).collect();
                // Warm up: first calls may set up thread-local state.
                for batch in idx.chunks(cfg.batch_size).take(10) {
                    learner.train_batch(&splits.train, batch, &mut rng);
                }
                learner.evaluate(&splits.val);
                learner.evaluate_warm(&splits.val, 0);
                let before = ALLOCATIONS.load(Ordering::SeqCst);
                for batch in idx.chunks(cfg.batch_size).skip(10) {
                    learner.train_batch(&splits.train, batch, &mut rng);
                }
                let during_training = ALLOCATIONS.load(Ordering::SeqCst) - before;
                let before = ALLOCATIONS.load(Ordering::SeqCst);
                learner.evaluate(&splits.val);
                learner.evaluate_warm(&splits.val, 0);
                let during_eval = ALLOCATIONS.load(Ordering::SeqCst) - before;
                assert_eq!(
                    (during_training, during_eval),
                    (0, 0),
                    "allocations with {threads} threads, {nudging:?}"
                );
            });
        }
    }
}
