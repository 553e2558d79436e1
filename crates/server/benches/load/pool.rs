//! Numbered requests spread over connections: the shape of every fixed-size phase (upload N
//! blocks, read them all back), so each scenario only says what request `i` is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::client::new_agent;
use crate::report::Route;

/// Runs `work(agent, i, route)` for every `i` in `0..count` on `conns` threads, each with its
/// own keep-alive connection, taking the next index until none is left or `limit` has passed.
/// Returns the merged route and the wall time of the whole phase in seconds.
pub fn spread<F>(conns: usize, count: u64, limit: Duration, work: F) -> (Route, f64)
where
    F: Fn(&ureq::Agent, u64, &mut Route) + Sync,
{
    let next = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = start + limit;
    let route = std::thread::scope(|s| {
        let handles: Vec<_> = (0..conns)
            .map(|_| {
                s.spawn(|| {
                    let agent = new_agent();
                    let mut route = Route::default();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count || Instant::now() >= deadline {
                            break;
                        }
                        work(&agent, i, &mut route);
                    }
                    route
                })
            })
            .collect();
        let mut route = Route::default();
        for h in handles {
            route.merge(h.join().expect("worker"));
        }
        route
    });
    (route, start.elapsed().as_secs_f64())
}
