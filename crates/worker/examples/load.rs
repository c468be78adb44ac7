//! A bounded load loop for benchmarks: `load URL CONCURRENCY SECONDS [TOKEN]`
//! GETs URL from CONCURRENCY keep-alive clients for SECONDS and prints one
//! JSON line: requests, errors, requests/s, p50/p99/max latency in ms.

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: load URL CONCURRENCY SECONDS [TOKEN]");
        std::process::exit(2);
    }
    let url = args[1].clone();
    let concurrency: usize = args[2].parse()?;
    let secs: f64 = args[3].parse()?;
    let token = args.get(4).cloned();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (url, token) = (url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut lat = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < end {
                let mut req = http.get(&url);
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let t0 = Instant::now();
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64().max(secs);
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "{{\"requests\": {}, \"errors\": {errors}, \"rps\": {:.0}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"max_ms\": {:.3}}}",
        all.len(),
        all.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        all.last().copied().unwrap_or(0.0)
    );
    Ok(())
}
