//! The floor under every delivery: what the kernel charges for the bare sends a chat
//! server cannot avoid. One thread writes pre-built 150-byte WebSocket frames to N
//! loopback TCP connections, one frame per `write` and then k frames per `write`, while
//! readers on other threads drain the far ends; the writer thread's own CPU time (from
//! `/proc/thread-self/stat`) divided by the frames it sent is the floor per delivery.
//! The server's CPU per delivery is worth reading as a multiple of this figure.
//!
//! Run: `cargo bench -p benches --bench floor` (`FLOOR_SOCKETS`, `FLOOR_SECONDS` to
//! change the 1,000 sockets and 3 s per case).

#![allow(clippy::print_stdout)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const FRAME_BYTES: usize = 150;

fn main() -> anyhow::Result<()> {
    let sockets: usize = env_or("FLOOR_SOCKETS", 1000);
    let seconds: u64 = env_or("FLOOR_SECONDS", 3);
    let (mut writers, readers) = pairs(sockets)?;
    // Readers: two threads, each draining half of the far ends with blocking reads
    // on non-blocking sockets in a loop (a poll loop without unsafe code).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut drains = Vec::new();
    let half = readers.len().div_ceil(2);
    let mut readers = readers.into_iter();
    for _ in 0..2 {
        let mine: Vec<TcpStream> = readers.by_ref().take(half).collect();
        let stop = std::sync::Arc::clone(&stop);
        drains.push(std::thread::spawn(move || drain(mine, &stop)));
    }
    let frame = frame();
    println!("floor: {sockets} loopback sockets, {FRAME_BYTES}-byte frames, {seconds} s per case");
    for k in [1usize, 4, 16] {
        let batch: Vec<u8> = frame
            .iter()
            .copied()
            .cycle()
            .take(FRAME_BYTES * k)
            .collect();
        let started = Instant::now();
        let cpu_before = thread_cpu_seconds()?;
        let mut frames = 0u64;
        while started.elapsed() < Duration::from_secs(seconds) {
            for w in &mut writers {
                w.write_all(&batch)?;
            }
            frames += (k * writers.len()) as u64;
        }
        let cpu = thread_cpu_seconds()? - cpu_before;
        let wall = started.elapsed().as_secs_f64();
        println!(
            "  {k:>2} frame(s) per write: {:.2} us writer CPU per frame, {:.0} frames/s",
            cpu * 1e6 / frames as f64,
            frames as f64 / wall
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(writers);
    for d in drains {
        let _ = d.join();
    }
    Ok(())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` connected loopback pairs: (writing ends, reading ends).
fn pairs(n: usize) -> anyhow::Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut writers = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    for _ in 0..n {
        let w = TcpStream::connect(addr)?;
        w.set_nodelay(true)?;
        let (r, _) = listener.accept()?;
        r.set_nonblocking(true)?;
        writers.push(w);
        readers.push(r);
    }
    Ok((writers, readers))
}

fn drain(mut sockets: Vec<TcpStream>, stop: &std::sync::atomic::AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut idle = true;
        for s in &mut sockets {
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    return;
                }
                idle = false;
            }
        }
        if idle {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// A server-to-client text frame of `FRAME_BYTES` bytes, as the server sends them.
fn frame() -> Vec<u8> {
    let payload = FRAME_BYTES - 2;
    let mut f = vec![0x81, payload as u8];
    f.extend(std::iter::repeat_n(b'x', payload));
    f
}

/// User + system CPU time of the calling thread, in seconds.
fn thread_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow::anyhow!("stat"))? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}
