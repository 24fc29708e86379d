//! The CPU engine's thread pool in the threaded build: rayon's global pool, each of its threads run
//! by a Web Worker that shares this module's memory. JavaScript drives the start
//! (`pkg/src/threads.js`): `new ThreadPool(n)`, one worker per thread (`pkg/src/pool-worker.js`, a
//! plain module URL that bundlers follow) given `sharedModule()`, `sharedMemory()` and `pool.queue()`,
//! each calling `runPoolThread(queue)`, then `pool.build()`. (wasm-bindgen-rayon does the same, but
//! its workers find the module through `import.meta.url`, which a bundler rewrites: the pool never
//! starts in a bundled app.)

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

use rayon::{ThreadBuilder, ThreadPoolBuilder};
use wasm_bindgen::prelude::*;

use crate::named_error;

/// Where rayon's threads wait to be picked up by a worker. Leaked: it lives as long as the module.
type Queue = Mutex<Receiver<ThreadBuilder>>;

#[wasm_bindgen]
pub struct ThreadPool {
    threads: usize,
    sender: SyncSender<ThreadBuilder>,
    queue: &'static Queue,
}

#[wasm_bindgen]
impl ThreadPool {
    #[wasm_bindgen(constructor)]
    pub fn new(threads: usize) -> ThreadPool {
        let (sender, receiver) = sync_channel(threads);
        ThreadPool { threads: threads.max(1), sender, queue: Box::leak(Box::new(Mutex::new(receiver))) }
    }

    /// The queue's address in the shared memory, for `runPoolThread` in each worker.
    pub fn queue(&self) -> usize {
        self.queue as *const Queue as usize
    }

    /// Build rayon's global pool once every worker waits on the queue (each takes one thread).
    pub fn build(&self) -> Result<(), JsValue> {
        let sender = self.sender.clone();
        ThreadPoolBuilder::new()
            .num_threads(self.threads)
            .spawn_handler(move |thread| sender.send(thread).map_err(|e| std::io::Error::other(e.to_string())))
            .build_global()
            .map_err(|e| named_error("HearthError", &format!("the CPU engine's thread pool did not start: {e}")))
    }
}

/// A pool worker's whole life: take one of rayon's threads from the queue and run it.
///
/// # Safety (why the address is sound)
/// `queue` comes from `ThreadPool::queue` of this module instance, whose memory every pool worker
/// shares; the queue is leaked, so it is never freed.
#[wasm_bindgen(js_name = runPoolThread)]
pub fn run_pool_thread(queue: usize) -> Result<(), JsValue> {
    // SAFETY: see above; JavaScript passes what `queue()` returned.
    let queue = unsafe { &*(queue as *const Queue) };
    let thread = queue
        .lock()
        .map_err(|_| named_error("HearthError", "the thread pool's queue was poisoned"))?
        .recv()
        .map_err(|_| named_error("HearthError", "the thread pool was dropped before it started"))?;
    thread.run();
    Ok(())
}

/// The compiled module, for the pool's workers to instantiate on the same memory.
#[wasm_bindgen(js_name = sharedModule)]
pub fn wasm_module() -> JsValue {
    wasm_bindgen::module()
}

/// The shared memory.
#[wasm_bindgen(js_name = sharedMemory)]
pub fn wasm_memory() -> JsValue {
    wasm_bindgen::memory()
}
